"""The experiment config: its schema (`base_config`), overrides, validation and `finalize`.

    config = finalize(base_config(), "gamma=4,max_new_tokens=64")

Config files (``configs/*.py``) change values of `base_config` only; `finalize` applies the
command line's ``key=value,...`` (`specjax.overrides`), validates every key and locks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from specjax.checkpoints import specs as model_specs
from specjax.drafters import registry
from specjax.eval import prompts as prompts_lib
from specjax.overrides import (
    ConfigError,
    all_keys,
    apply_overrides,
    parse_arg,
    unknown_keys_message,
)

# What trains the heads of kind eagle / medusa (named in the error for a missing folder).
HEADS_TRAINING = {
    "eagle": "python -m experiments.train_draft --config=configs/train_eagle_smollm.py "
    "--workdir=<run> (for SmolLM2; the heads land in <run>/drafter)",
    "medusa": "python -m experiments.train_draft --config=configs/train_medusa_smollm.py "
    "--workdir=<run> (for SmolLM2; the heads land in <run>/drafter)",
}
SYNTHETIC = "synthetic"  # random token prompts, for random models (no tokenizer)
SYNTHETIC_CATEGORIES = ("short", "long")
SUMMARY_FILE = "summary.json"  # written last: its presence marks a run complete
SUMMARY_FILE = "summary.json"


# --------------------------------------------------------------------------------------------
# Config schema.


def base_config() -> ml_collections.ConfigDict:
    """Every key an experiment config has, with defaults; config files change values only."""
    c = ml_collections.ConfigDict()
    c.label = ""  # name of the pair in tables; "" = "<target> / <draft>"
    # Target: a registered model name, a checkpoint path, a hub id, or random:<shape>.
    c.target = "qwen2.5-coder-1.5b-instruct"
    c.tokenizer = ""  # "" = the target's own; give a model name for a random target
    # The drafter: a kind of specjax.drafters.registry (model, ngram, early-exit, eagle,
    # medusa; early_exit is accepted) and every kind's knobs with the registry's defaults
    # (model; ngram_n, ngram_min; exit_layer, 0 = a third of the target's layers; heads,
    # draft_vocab; weights, float or int8, eagle only).
    # Only the kind's own knobs are read. The default pair drafts with Qwen2.5-Coder 0.5B.
    c.drafter = ml_collections.ConfigDict(
        dict(kind="model", **{**registry.knob_defaults(), "model": "qwen2.5-coder-0.5b-instruct"})
    )
    c.gamma = 4  # draft tokens per target call (the maximum with adaptive_gamma)
    c.adaptive_gamma = False  # per-row draft length in 1..gamma, set by recent acceptance
    # Token tree (a drafter.kind that drafts trees: model, early-exit, eagle), "" = a linear
    # draft. Static branching per level "4,2,1", or EAGLE-2's "dynamic:depth=4,top_k=4,
    # nodes=16"; either may end in ",lookup=6" (a prompt-lookup branch of 6 copied tokens;
    # ",lookup_ngram=N,lookup_ngram_min=M": the longest / shortest n-gram matched, 3 / 1).
    # The tree's depth replaces gamma.
    c.tree = ""
    c.sampling = ml_collections.ConfigDict(
        dict(temperature=0.0, top_k=0, top_p=1.0)  # 0.0 = greedy; top_k 0 / top_p 1.0 = off
    )
    c.batch_size = 1  # rows decoded together (batch 1 is the latency setting)
    c.prompts = ml_collections.ConfigDict(
        dict(
            name="mt_bench",  # mt_bench | humaneval | gsm8k | sharegpt | synthetic
            subset=16,  # prompts, stratified by category (0 = all)
            seed=0,  # seed of the subset (hash-based: identical on every machine)
            categories="",  # comma-separated; "" = all categories of the set
            chat_template=True,  # wrap each prompt as a user turn of the chat template
            max_prompt_tokens=1024,  # longer prompts keep their last tokens
        )
    )
    c.max_new_tokens = 128
    c.stop_at_eos = True  # stop rows at the tokenizer's EOS ids (budget only if False)
    c.dtype = "bfloat16"  # float32 | bfloat16 (weights and KV cache)
    c.mesh = ml_collections.ConfigDict(dict(data=1, model=1))  # device mesh axes
    c.repeats = 3  # timed calls after the compile call; medians are reported
    c.seed = 0  # sampling seed, and the seed of random models
    c.measure_c = True  # time one draft step and one target step (cost model's c)
    return c


def categories(config: ml_collections.ConfigDict) -> list[str]:
    return [c.strip() for c in str(config.prompts.categories).split(",") if c.strip()]


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check every value; raise ConfigError listing all problems. Returns ``config``.

    Cheap: nothing is loaded, downloaded or compiled, so bad input fails before hours of
    work. Unknown keys are refused earlier, by :func:`apply_overrides` and by the lock.
    """
    unknown = unknown_keys_message(config, base_config())
    if unknown:
        raise ConfigError(f"{unknown}; the schema is specjax.experiment.base_config()")
    missing = sorted(set(all_keys(base_config())) - set(all_keys(config)))
    if missing:
        raise ConfigError(
            f"config lacks the keys {missing} (start from specjax.experiment.base_config())"
        )
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    def is_int(x: Any) -> bool:
        return isinstance(x, int | np.integer) and not isinstance(x, bool)

    for key in ("gamma", "max_new_tokens", "batch_size", "repeats"):
        v = config[key]
        need(is_int(v) and v >= 1, f"{key} must be an integer >= 1, got {v!r}")
    need(
        is_int(config.seed) and 0 <= config.seed < 2**63,
        f"seed must be an integer in [0, 2**63), got {config.seed!r}",
    )
    s = config.sampling
    need(
        0 <= s.temperature < math.inf,
        f"sampling.temperature must be >= 0 and finite (0 = greedy), got {s.temperature}",
    )
    need(is_int(s.top_k) and s.top_k >= 0, f"sampling.top_k must be >= 0 (0 = off), got {s.top_k}")
    need(0 < s.top_p <= 1, f"sampling.top_p must be in (0, 1] (1 = off), got {s.top_p}")
    need(
        config.dtype in model_specs.DTYPES,
        f"dtype must be one of {', '.join(model_specs.DTYPES)}, got {config.dtype!r}",
    )
    for axis in ("data", "model"):
        v = config.mesh[axis]
        need(is_int(v) and v >= 1, f"mesh.{axis} must be an integer >= 1, got {v!r}")
    if is_int(config.mesh.data) and config.mesh.data >= 1 and is_int(config.batch_size):
        need(
            config.batch_size % config.mesh.data == 0,
            f"batch_size ({config.batch_size}) must be a multiple of mesh.data "
            f"({config.mesh.data}): rows are split over the data axis",
        )

    d = config.drafter
    kind = None
    try:
        kind = registry.canonical_kind(d.kind)
    except ValueError as error:
        problems.append(f"drafter.kind: {error}")
    if kind in ("eagle", "medusa"):  # checks the folder too, and says how to train heads
        problem = _heads_problem(kind, str(d.heads), config.gamma)
        need(problem is None, f"drafter.heads: {problem}")
    elif kind is not None:
        try:
            registry.spec_from_config(d)  # the kind's knobs: values the registry accepts
        except ValueError as error:
            problems.append(f"drafter: {error}")
    if kind == "model":
        problem = model_specs.check_model_spec(d.model, "draft")
        need(problem is None, f"drafter.model: {problem}")
    single_device = config.mesh.data == 1 and config.mesh.model == 1
    if str(config.tree):
        try:
            registry.parse_tree(str(config.tree))
        except ValueError as error:
            problems.append(f"tree: {error} (static '4,2,1' or 'dynamic:depth=4,top_k=4,nodes=16')")
        tree_kinds = tuple(k for k, v in registry.KINDS.items() if v.drafts_trees)
        need(
            kind is None or registry.KINDS[kind].drafts_trees,
            f"tree={config.tree!r} needs a drafter that drafts trees: drafter.kind must be one "
            f"of {tree_kinds}, got {d.kind!r}",
        )
        need(single_device, "tree does not support a mesh yet: use mesh.data=1, mesh.model=1")
        need(
            not config.adaptive_gamma,
            "adaptive_gamma and tree exclude each other (a tree has a fixed depth)",
        )

    problem = model_specs.check_model_spec(config.target, "target")
    need(problem is None, f"target: {problem}")
    if config.tokenizer:
        problem = model_specs.check_model_spec(config.tokenizer, "tokenizer")
        need(problem is None, f"tokenizer: {problem}")

    p = config.prompts
    sets = (*prompts_lib.available_sets(), SYNTHETIC)
    name = str(p.name)
    if name != SYNTHETIC:
        try:
            name = prompts_lib._spec(name).name  # forgives case and spelling, suggests
        except ValueError as error:
            problems.append(f"prompts.name: {error} (or {SYNTHETIC!r} for random models)")
            name = ""
    need(
        is_int(p.subset) and p.subset >= 0, f"prompts.subset must be >= 0 (0 = all), got {p.subset}"
    )
    need(is_int(p.seed) and p.seed >= 0, f"prompts.seed must be >= 0, got {p.seed}")
    need(
        p.max_prompt_tokens >= 1,
        f"prompts.max_prompt_tokens must be >= 1, got {p.max_prompt_tokens}",
    )
    if name in sets:
        known = SYNTHETIC_CATEGORIES if name == SYNTHETIC else prompts_lib.categories(name)
        bad = [c for c in categories(config) if c not in known]
        need(not bad, f"prompts.categories {bad} unknown for {name!r}; known: {', '.join(known)}")
    random_target = str(config.target).startswith(model_specs.RANDOM_PREFIX)
    need(
        not (random_target and name not in ("", SYNTHETIC) and not config.tokenizer),
        f"target {config.target!r} has random weights and no tokenizer: use "
        f"prompts.name={SYNTHETIC!r}, or name a tokenizer (config.tokenizer=<model>)",
    )
    if problems:
        raise ConfigError("bad experiment config:\n  - " + "\n  - ".join(problems))
    return config


def _heads_problem(kind: str, folder: str, gamma: int) -> str | None:
    """Why ``folder`` holds no saved heads of ``kind`` that draft ``gamma`` tokens (reads
    heads.json only), or None."""
    from specjax.drafters.heads import SPEC_FILE, resolve_heads

    train = f"train {kind} heads first: {HEADS_TRAINING[kind]}"
    if not folder:
        return f"drafter.kind={kind!r} needs drafter.heads=<folder of saved heads>; {train}"
    try:
        spec_file = resolve_heads(folder) / SPEC_FILE  # a folder, or a published name
    except FileNotFoundError as error:
        return f"{error}; {train}"
    if not spec_file.is_file():
        return f"{folder!r} holds no saved draft heads (no {SPEC_FILE}); {train}"
    try:
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
    except ValueError as error:
        return f"{spec_file} is not valid JSON ({error})"
    if spec.get("kind") != kind:
        return f"{folder!r} holds {spec.get('kind')} heads, not {kind} (drafter.kind)"
    num_heads = spec.get("head_config", {}).get("num_heads")
    if kind == "medusa" and num_heads is not None and gamma > num_heads:
        return f"{folder!r} holds {num_heads} Medusa heads: gamma must be <= {num_heads}"
    return None


def finalize(
    config: ml_collections.ConfigDict, arg: str | Mapping[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """Apply ``arg`` (``"k=v,..."`` or a mapping), validate, and lock: what get_config returns.

    Locked: setting a key that does not exist fails (``--config.gamme=4`` too); values of the
    wrong type fail too (ml_collections checks types).
    """
    overrides = parse_arg(arg) if isinstance(arg, str | None) else dict(arg)
    config = validate(apply_overrides(config, overrides))
    config.drafter.kind = registry.canonical_kind(config.drafter.kind)  # early_exit: an alias
    config.lock()
    return config


def config_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)
