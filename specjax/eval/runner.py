"""Experiments: config schema, one run, sweeps that resume, and reports.

The launchers in ``experiments/`` only parse flags; everything here is importable, so a
notebook runs exactly what the command line runs::

    config = runner.finalize(runner.base_config(), "gamma=4,max_new_tokens=64")
    result = runner.run_experiment(config, "runs/x")
    runner.run_sweep(config, [{"gamma": 1}, {"gamma": 2}], "runs/sweep")
    print(runner.write_report("runs/sweep"))

One run (:func:`run_experiment`): load the pair and the prompts, apply the chat template,
then for every batch run autoregressive and speculative decoding on the same prompts in the
same process, interleaved (AR, spec, AR, spec, ...) so slow drift of a shared machine hits
both alike. The first call of each is the compile call (``Timing.compile_s``); the reported
seconds are medians over ``repeats`` later calls. Greedy outputs are checked token for
token. Then the draft/target step-cost ratio c is measured for the Leviathan et al. model.
Any drafter kind runs (``drafter.kind``: model, ngram, early-exit, eagle, medusa: the kinds,
knobs and defaults of ``specjax.drafters.registry``, which builds them), linear or adaptive
(``adaptive_gamma``) or as a token tree (``tree``, the registry's tree syntax).

A run's workdir:

  config.json         the whole config, as run
  metrics.jsonl       one RunSummary per prompt category, then "all"
  results.csv         the same, flat (lists as JSON)
  generations.jsonl   per prompt: ids, text, stop reason, accepted drafts, exact or not
  summary.json        the "all" summary + environment; written LAST: its presence marks the
                      run complete (a sweep skips such points when it resumes)
  plots/*.png         alpha per position, accepted-length histogram, predicted vs measured,
                      speedup vs gamma (a sweep over drafters: also speedup per drafter)

A sweep's workdir holds ``sweep.json`` (base config, points, command), one subfolder per
point under ``points/``, and the merged ``metrics.jsonl``, ``results.csv``, ``plots/`` and
``report.md``. Every file is written to a temporary name and renamed, so an interrupted
sweep never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import json
import logging
import math
import os
import platform
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from specjax.drafters import registry
from specjax.eval import cost_model, metrics
from specjax.eval import models as models_lib
from specjax.eval import prompts as prompts_lib
from specjax.eval.metrics import RunStats, RunSummary
from specjax.eval.timing import Timer, Timing
from specjax.fileio import atomic_write

__all__ = [
    "SYNTHETIC",
    "ConfigError",
    "EncodedPrompt",
    "RunResult",
    "SweepResult",
    "apply_overrides",
    "base_config",
    "collect_summaries",
    "encode_prompts",
    "finalize",
    "is_complete",
    "parse_arg",
    "parse_points",
    "point_name",
    "report_markdown",
    "run_experiment",
    "run_sweep",
    "validate",
    "write_plots",
    "write_report",
]

log = logging.getLogger("specjax.eval.runner")

# What trains the heads of kind eagle / medusa (named in the error for a missing folder).
HEADS_TRAINING = {
    "eagle": "python -m experiments.train_draft --config=configs/train_eagle_smollm.py "
    "--workdir=<run> (for SmolLM2; the heads land in <run>/drafter)",
    "medusa": "python -m experiments.train_draft --config=configs/train_medusa_smollm.py "
    "--workdir=<run> (for SmolLM2; the heads land in <run>/drafter)",
}
SYNTHETIC = "synthetic"  # random token prompts, for random models (no tokenizer)
SYNTHETIC_CATEGORIES = ("short", "long")
SUMMARY_FILE = "summary.json"


class ConfigError(ValueError):
    """An experiment config has unknown keys or bad values (the message lists them all)."""


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
    # (model; ngram_n, ngram_min; exit_layer, 0 = a third of the target's layers; heads).
    # Only the kind's own knobs are read. The default pair drafts with Qwen2.5-Coder 0.5B.
    c.drafter = ml_collections.ConfigDict(
        dict(kind="model", **{**registry.knob_defaults(), "model": "qwen2.5-coder-0.5b-instruct"})
    )
    c.gamma = 4  # draft tokens per target call (the maximum with adaptive_gamma)
    c.adaptive_gamma = False  # per-row draft length in 1..gamma, set by recent acceptance
    # Token tree (a drafter.kind that drafts trees: model, early-exit, eagle), "" = a linear
    # draft. Static branching per level "4,2,1", or EAGLE-2's "dynamic:depth=4,top_k=4,
    # nodes=16". The tree's depth replaces gamma.
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


_SPLIT_ARG = re.compile(r",(?=\s*[A-Za-z_][\w.]*\s*=)")


def parse_arg(arg: str | None) -> dict[str, str]:
    """``"gamma=4,sampling.temperature=0.7"`` -> {"gamma": "4", ...} (values stay strings).

    A comma starts a new pair only when ``key=`` follows, so list-like values survive:
    ``prompts.categories=writing,coding`` is one pair.
    """
    if not arg or not arg.strip():
        return {}
    out: dict[str, str] = {}
    for part in _SPLIT_ARG.split(arg.strip()):
        if "=" not in part:
            raise ConfigError(f"config argument {part!r} is not key=value (in {arg!r})")
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys += _all_keys(v, prefix + k + ".")
    return keys


def _coerce(key: str, value: Any, current: Any) -> Any:
    """``value`` (often a string from a command line) as the type of the field it replaces."""
    if not isinstance(value, str):
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if isinstance(current, bool):
            low = value.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
    except ValueError:
        kind = type(current).__name__
        raise ConfigError(f"{key}={value!r}: expected a value of type {kind}") from None
    return value


def unknown_keys_message(
    config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict
) -> str | None:
    """Which keys of ``config`` the ``schema`` lacks, each with its closest schema keys; None
    when there are none."""
    known = _all_keys(schema)
    unknown = [k for k in _all_keys(config) if k not in known]
    unknown = [k for k in unknown if not any(k.startswith(u + ".") for u in unknown)]
    if not unknown:
        return None
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=3)
        parts.append(
            f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else "")
        )
    return f"unknown config key{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted keys set; unknown keys fail with a suggestion."""
    config = ml_collections.ConfigDict(config.to_dict())  # an unlocked deep copy
    known = _all_keys(config)
    for key, value in overrides.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}.{hint}")
        *groups, name = key.split(".")
        parent = config
        for group in groups:
            parent = parent[group]
        current = parent[name]
        if isinstance(current, ml_collections.ConfigDict):
            fields = ", ".join(f"{key}.{k}" for k in current)
            raise ConfigError(f"{key!r} is a group of settings; set one of: {fields}")
        try:
            parent[name] = _coerce(key, value, current)
        except TypeError as error:
            raise ConfigError(f"{key}={value!r}: {error}") from None
    return config


def _categories(config: ml_collections.ConfigDict) -> list[str]:
    return [c.strip() for c in str(config.prompts.categories).split(",") if c.strip()]


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check every value; raise ConfigError listing all problems. Returns ``config``.

    Cheap: nothing is loaded, downloaded or compiled, so bad input fails before hours of
    work. Unknown keys are refused earlier, by :func:`apply_overrides` and by the lock.
    """
    unknown = unknown_keys_message(config, base_config())
    if unknown:
        raise ConfigError(f"{unknown}; the schema is runner.base_config()")
    missing = sorted(set(_all_keys(base_config())) - set(_all_keys(config)))
    if missing:
        raise ConfigError(f"config lacks the keys {missing} (start from runner.base_config())")
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
        config.dtype in models_lib.DTYPES,
        f"dtype must be one of {', '.join(models_lib.DTYPES)}, got {config.dtype!r}",
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
        problem = models_lib.check_model_spec(d.model, "draft")
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

    problem = models_lib.check_model_spec(config.target, "target")
    need(problem is None, f"target: {problem}")
    if config.tokenizer:
        problem = models_lib.check_model_spec(config.tokenizer, "tokenizer")
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
        bad = [c for c in _categories(config) if c not in known]
        need(not bad, f"prompts.categories {bad} unknown for {name!r}; known: {', '.join(known)}")
    random_target = str(config.target).startswith(models_lib.RANDOM_PREFIX)
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
    from specjax.drafters.heads import SPEC_FILE

    train = f"train {kind} heads first: {HEADS_TRAINING[kind]}"
    if not folder:
        return f"drafter.kind={kind!r} needs drafter.heads=<folder of saved heads>; {train}"
    spec_file = Path(folder).expanduser() / SPEC_FILE
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


def _config_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


# --------------------------------------------------------------------------------------------
# Prompts.


@dataclasses.dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as token ids; ``truncated`` when it lost its start to max_prompt_tokens."""

    id: str
    category: str
    ids: tuple[int, ...]
    text: str = ""
    truncated: bool = False


def _synthetic_prompts(config: ml_collections.ConfigDict, vocab_size: int) -> list[EncodedPrompt]:
    """Random token prompts in two length categories (for random models, which read no text).

    Lengths stay within one 16-token padding bucket so tiny runs compile once per decoder.
    """
    n = int(config.prompts.subset) or 8
    wanted = _categories(config) or list(SYNTHETIC_CATEGORIES)
    rng = np.random.default_rng([int(config.prompts.seed), 7919])
    lengths = {"short": (3, 8), "long": (9, 16)}
    out = []
    for i in range(n):
        category = wanted[i % len(wanted)]
        lo, hi = lengths[category]
        ids = rng.integers(1, vocab_size, size=int(rng.integers(lo, hi)))
        out.append(EncodedPrompt(f"synthetic/{i}", category, tuple(int(t) for t in ids)))
    return out


def _encode(tokenizer: Any, text: str, chat: bool) -> list[int]:
    if not chat:
        return list(tokenizer.encode(text))
    messages = [{"role": "user", "content": text}]
    if hasattr(tokenizer, "encode_chat"):  # one BOS even when the template writes it
        return list(tokenizer.encode_chat(messages))
    return list(tokenizer.encode(tokenizer.apply_chat_template(messages), parse_special=True))


def encode_prompts(config: ml_collections.ConfigDict, pair: models_lib.Pair) -> list[EncodedPrompt]:
    """The config's prompt subset as token ids (first user turn, chat template applied)."""
    vocab_size = pair.target.config.vocab_size
    if config.prompts.name == SYNTHETIC:
        return _synthetic_prompts(config, vocab_size)
    if pair.tokenizer is None:
        reason = pair.target.metadata.get("tokenizer_error", "random weights")
        raise ValueError(
            f"prompt set {config.prompts.name!r} needs a tokenizer and the target has none "
            f"({reason}); set config.tokenizer or use prompts.name={SYNTHETIC!r}"
        )
    chosen = prompts_lib.load_prompts(
        config.prompts.name,
        subset=int(config.prompts.subset) or None,
        seed=int(config.prompts.seed),
        categories=_categories(config) or None,
    )
    limit = int(config.prompts.max_prompt_tokens)
    out = []
    for p in chosen:
        ids = _encode(pair.tokenizer, p.text, bool(config.prompts.chat_template))
        # Keep the END: with a chat template it holds the assistant-turn opening the model
        # must see to answer at all.
        truncated = len(ids) > limit
        out.append(EncodedPrompt(p.id, p.category, tuple(ids[-limit:]), p.text, truncated))
    return out


def _category_order(
    config: ml_collections.ConfigDict, prompts: Sequence[EncodedPrompt]
) -> list[str]:
    present = list(dict.fromkeys(p.category for p in prompts))
    if config.prompts.name == SYNTHETIC:
        canonical = SYNTHETIC_CATEGORIES
    else:
        canonical = prompts_lib.categories(config.prompts.name)
    return [c for c in canonical if c in present] + [c for c in present if c not in canonical]


def _batches(
    prompts: Sequence[EncodedPrompt], order: Sequence[str], batch_size: int
) -> list[list[EncodedPrompt]]:
    """Batches that never mix categories (so per-category timings are measured, not split),
    with prompts of similar length together (less padding)."""
    out = []
    for category in order:
        rows = sorted((p for p in prompts if p.category == category), key=lambda p: len(p.ids))
        out += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    return out


# --------------------------------------------------------------------------------------------
# Files.


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: all or nothing."""
    atomic_write(path, text)


def make_workdir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a folder, created with its parents; a clear error when a file is there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"workdir {path} is a file, not a folder: pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot create the workdir {path}: {error.strerror or error}") from None
    return path


def _jsonable(x: Any) -> Any:
    return metrics._jsonable(x)


def _environment() -> dict[str, Any]:
    import jax

    devices = jax.devices()
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "python": platform.python_version(),
        "host": platform.node(),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------
# One run.


@dataclasses.dataclass
class RunResult:
    """What a run wrote: its workdir and summaries (one per category, then "all")."""

    workdir: Path
    summaries: list[RunSummary]
    skipped: bool = False  # a sweep found it complete and did not run it again

    @property
    def overall(self) -> RunSummary:
        return next(s for s in self.summaries if s.category == "all")


@dataclasses.dataclass
class _Batch:
    prompts: list[EncodedPrompt]
    spec_out: Any
    ar_out: Any
    spec_timing: Timing
    ar_timing: Timing


def _check_runnable(config: ml_collections.ConfigDict) -> None:
    needed = int(config.mesh.data) * int(config.mesh.model)
    if needed > 1:
        import jax

        if needed > jax.device_count():
            raise ValueError(
                f"mesh data={config.mesh.data} x model={config.mesh.model} needs {needed} "
                f"devices, {jax.device_count()} are available"
            )


def _mesh(config: ml_collections.ConfigDict) -> Any | None:
    """The (data, model) mesh of a sharded run; None runs the single-device program."""
    if int(config.mesh.data) * int(config.mesh.model) == 1:
        return None
    from specjax.parallel import make_mesh

    return make_mesh(int(config.mesh.data), int(config.mesh.model))


def _take_rows(out: Any, n: int) -> Any:
    """The first ``n`` rows of a GenerateOutput (every per-row field has B leading)."""
    import jax

    batch = out.tokens.shape[0]
    if n == batch:
        return out
    return jax.tree.map(lambda x: x[:n] if x.ndim and x.shape[0] == batch else x, out)


def _sampling(config: ml_collections.ConfigDict):
    from specjax import Sampling

    s = config.sampling
    return Sampling.create(
        float(s.temperature), int(s.top_k) or None, float(s.top_p) if s.top_p < 1 else None
    )


def _decode_batches(
    config: ml_collections.ConfigDict,
    pair: models_lib.Pair,
    batches: Sequence[Sequence[EncodedPrompt]],
    eos_ids: Sequence[int],
    progress: bool,
) -> list[_Batch]:
    from tqdm.auto import tqdm

    import specjax

    sampling = _sampling(config)
    mesh = _mesh(config)
    common = dict(
        sampling=sampling,
        max_new_tokens=int(config.max_new_tokens),
        eos_ids=list(eos_ids),
        seed=int(config.seed),
        **({"mesh": mesh} if mesh is not None else {}),
    )
    # Only when set: the sharded program takes no tree (validate refuses one with a mesh).
    options: dict[str, Any] = {}
    if str(config.tree):
        options["tree"] = str(config.tree)
    if config.adaptive_gamma:
        options["adaptive_gamma"] = True
    data = int(config.mesh.data)
    out = []
    bar = tqdm(batches, desc=f"γ={config.gamma} batches", unit="batch", disable=not progress)
    for batch in bar:
        ids = [list(p.ids) for p in batch]
        # A sharded batch must split evenly over the data axis: a category's last, short
        # batch is padded with copies of its last prompt, whose rows are then dropped (their
        # compute stays in the timing, as it would in a served batch).
        ids += [ids[-1]] * (-len(ids) % data)

        def ar(ids=ids):
            return specjax.generate(pair.target.pair, None, ids, **common)

        def spec(ids=ids):
            return specjax.generate(
                pair.target.pair, pair.drafter, ids, gamma=int(config.gamma), **common, **options
            )

        # Interleaved, so drift on a shared machine affects both decoders alike. Call 0 of
        # each compiles (or reuses a compilation of the same shapes): it is kept apart.
        t_ar, t_spec = Timer(), Timer()
        for _ in range(int(config.repeats) + 1):
            ar_out = t_ar(ar)
            spec_out = t_spec(spec)
        n = len(batch)
        out.append(
            _Batch(
                list(batch),
                _take_rows(spec_out, n),
                _take_rows(ar_out, n),
                t_spec.timing(),
                t_ar.timing(),
            )
        )
    return out


@functools.lru_cache(maxsize=8)
def _jitted_forward(model: Any) -> Callable[..., Any]:
    """One jitted forward per model (Model is hashable), so a sweep compiles each step once.
    Returns logits only: the step's cost without handing back the whole cache."""
    import jax

    return jax.jit(lambda p, t, pos, c: model.forward(p, t, pos, c)[0])


def _step_fn(model_params: tuple[Any, Any], batch: int, cache_len: int, context: int, T: int):
    """A jitted forward of T tokens per row on a cache holding ``context`` tokens."""
    import jax
    import jax.numpy as jnp

    model, params = model_params
    dtype = jax.tree.leaves(params)[0].dtype
    cache = model.init_cache(batch, cache_len, dtype=dtype)
    cache = dataclasses.replace(cache, lengths=jnp.full((batch,), context, jnp.int32))
    tokens = jnp.ones((batch, T), jnp.int32)
    positions = context + jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (batch, T))
    forward = _jitted_forward(model)
    return lambda: forward(params, tokens, positions, cache)


def _ngram_step_fn(drafter: Any, vocab_size: int, batch: int, cache_len: int, context: int, K: int):
    """A jitted n-gram ``propose`` of K tokens over a sequence of ``context`` random tokens.

    Its cost does not depend on the tokens: every n-gram length is compared at every slot."""
    import jax
    import jax.numpy as jnp

    from specjax import Sampling
    from specjax.decoding.state import DraftContext

    rng = np.random.default_rng(0)
    draft_context = DraftContext(
        jnp.asarray(rng.integers(0, vocab_size, (batch, cache_len)), jnp.int32),
        jnp.full((batch,), context, jnp.int32),
    )
    propose = jax.jit(
        lambda ctx, key: drafter.propose(None, None, ctx, K, Sampling.create(0.0), key)[0]
    )
    key = jax.random.key(0)
    return lambda: propose(draft_context, key)


def _drafter(config: ml_collections.ConfigDict) -> registry.DrafterSpec:
    """The registry's spec of the config's drafter, tree and adaptive gamma included."""
    return registry.spec_from_config(
        config.drafter,
        gamma=int(config.gamma),
        adaptive=bool(config.adaptive_gamma),
        tree=str(config.tree) or None,
    )


def _measure_cost(
    config: ml_collections.ConfigDict, pair: models_lib.Pair, prompts: Sequence[EncodedPrompt]
) -> dict[str, float] | None:
    """c = draft step / target step (one token per row, batch as run), and the cost of the
    verification call (gamma + 1 tokens, a tree's nodes + 1) in target steps (1 in the
    paper's model).

    The draft step: a 1-token forward of the draft model (kind model, and early-exit's
    k-layer model); for ngram, one ``propose`` of gamma tokens divided by gamma (so that
    gamma * c is still the drafting cost per target call). EAGLE / Medusa heads are not
    timed (their step is not one model forward): no c, no prediction.
    """
    if not config.measure_c:
        return None
    kind = _drafter(config).kind
    if pair.draft is None and kind != "ngram":
        log.info("c is not measured for drafter.kind=%s: no cost-model prediction", kind)
        return None
    if _mesh(config) is not None:
        # Single-device step times say nothing about a sharded step; c for sharded runs
        # needs specjax.parallel.sharded.forward_step (not wired here yet).
        log.warning("c is not measured for sharded runs (mesh != 1x1): no prediction")
        return None
    tree = _drafter(config).tree
    gamma = tree.depth if tree is not None else int(config.gamma)
    slots = tree.num_nodes + 1 if tree is not None else gamma + 1  # tokens of a verify call
    batch = int(config.batch_size)
    # The caches the decoders use (attention reads every slot, masked, so the slot count
    # matters): the longest prompt padded to its bucket, the budget, one verify call's spare
    # slots. Filled to the median prompt plus half the budget: a typical mid-generation step.
    longest = max(len(p.ids) for p in prompts)
    cache_len = -(-longest // 16) * 16 + int(config.max_new_tokens) + slots
    context = int(np.median([len(p.ids) for p in prompts])) + int(config.max_new_tokens) // 2
    context = min(context, cache_len - slots)
    repeats = max(10, int(config.repeats))
    if pair.draft is not None:
        draft_step = _step_fn(pair.draft.pair, batch, cache_len, context, 1)
        per_call = 1
    else:  # ngram
        vocab = pair.target.config.vocab_size
        draft_step = _ngram_step_fn(pair.drafter, vocab, batch, cache_len, context, gamma)
        per_call = gamma
    target_step = _step_fn(pair.target.pair, batch, cache_len, context, 1)
    verify_step = _step_fn(pair.target.pair, batch, cache_len, context, slots)
    # Interleaved (draft, target, verify, draft, ...) rather than one after the other: on a
    # shared machine, load that comes and goes would otherwise land on one of the three.
    timers = [Timer(), Timer(), Timer()]
    for _ in range(repeats + 1):  # call 0 compiles
        for timer, step in zip(timers, (draft_step, target_step, verify_step), strict=True):
            timer(step)
    draft_t, target_t, verify_t = (t.timing() for t in timers)
    cost = cost_model.CostMeasurement(draft=draft_t, target=target_t)
    verify = cost_model.CostMeasurement(draft=verify_t, target=target_t)
    return {
        "c": cost.c / per_call,
        "draft_step_s": cost.draft_s / per_call,
        "target_step_s": cost.target_s,
        "verify_step_s": verify.draft_s,
        "verify_cost": verify.c,
        "context_tokens": context,
    }


def _drafter_spec(config: ml_collections.ConfigDict, pair: models_lib.Pair) -> str:
    """The drafter of a summary as registry spec text (``registry.parse_spec`` reads it
    back), with what the run resolved: the exit layer that 0 meant, the draft model's spec."""
    spec = dataclasses.replace(_drafter(config), gamma=None)  # gamma has its own column
    if spec.kind == "early-exit" and pair.draft is not None:
        spec = dataclasses.replace(
            spec, knobs={**spec.knobs, "exit_layer": pair.draft.config.num_layers}
        )
    elif spec.kind == "model" and pair.draft is not None:
        spec = dataclasses.replace(spec, knobs={**spec.knobs, "model": pair.draft.spec})
    return spec.text()


def _summaries(
    config: ml_collections.ConfigDict,
    pair: models_lib.Pair,
    results: Sequence[_Batch],
    order: Sequence[str],
    cost: dict[str, float] | None,
    extra: dict[str, Any],
) -> list[RunSummary]:
    greedy = float(config.sampling.temperature) == 0.0
    groups: dict[str, list[_Batch]] = {c: [] for c in order}
    for r in results:
        groups[r.prompts[0].category].append(r)
    groups["all"] = list(results)
    out = []
    for category, rs in groups.items():
        if not rs:
            continue
        stats = RunStats.concat([RunStats.from_output(r.spec_out) for r in rs])
        exact = None
        if greedy:
            checks = [
                metrics.check_exact(
                    r.spec_out.tokens,
                    r.ar_out.tokens,
                    r.spec_out.num_generated,
                    r.ar_out.num_generated,
                )
                for r in rs
            ]
            exact = all(c.all_equal for c in checks)
            mismatched = sum(c.num_mismatched for c in checks)
        spec_s = sum(r.spec_timing.median_s for r in rs)
        ar_s = sum(r.ar_timing.median_s for r in rs)
        s = metrics.summarize(
            stats,
            spec_timing=spec_s,
            ar_timing=ar_s,
            exact=exact,
            c=None if cost is None else cost["c"],
            label=pair.label,
            drafter=_drafter_spec(config, pair),
            prompt_set=str(config.prompts.name),
            category=category,
            batch_size=int(config.batch_size),
            num_prompts=stats.batch_size,
            max_new_tokens=int(config.max_new_tokens),
            temperature=float(config.sampling.temperature),
            extra=dict(extra),
        )
        # Compile time: what each batch's first call took beyond a steady call (zero for
        # batches whose shapes were already compiled), summed.
        s.spec_compile_seconds = float(sum(r.spec_timing.compile_s for r in rs))
        s.ar_compile_seconds = float(sum(r.ar_timing.compile_s for r in rs))
        if greedy:
            s.extra["rows_mismatched"] = mismatched
        if cost is not None:
            s.extra.update(cost)
            if math.isfinite(s.alpha):
                s.extra["predicted_speedup_measured_verify"] = float(
                    cost_model.predicted_speedup(s.alpha, s.gamma, cost["c"], cost["verify_cost"])
                )
        out.append(s)
    return out


def _generations(
    pair: models_lib.Pair, results: Sequence[_Batch], greedy: bool
) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        spec_lists, ar_lists = r.spec_out.token_lists(), r.ar_out.token_lists()
        reasons = r.spec_out.stop_reason_names()
        accepted = np.asarray(r.spec_out.stats.accepted)
        calls = np.asarray(r.spec_out.stats.verify_calls)
        for b, p in enumerate(r.prompts):
            row = {
                "id": p.id,
                "category": p.category,
                "prompt_tokens": len(p.ids),
                "truncated": p.truncated,
                "tokens": spec_lists[b],
                "stop_reason": reasons[b],
                "verify_calls": int(calls[b]),
                "accepted": int(accepted[b]),
                "exact": (spec_lists[b] == ar_lists[b]) if greedy else None,
            }
            if getattr(r.spec_out, "from_draft", None) is not None:
                # "1" where the token is an accepted draft, "0" where the target made it.
                flags = np.asarray(r.spec_out.from_draft)[b, : len(spec_lists[b])]
                row["from_draft"] = "".join("1" if f else "0" for f in flags)
            if pair.tokenizer is not None:
                row["text"] = pair.tokenizer.decode(spec_lists[b], skip_special=True)
            rows.append(row)
    return rows


def run_experiment(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike[str],
    *,
    progress: bool = True,
    plots: bool = True,
) -> RunResult:
    """Run one experiment and write its workdir (see the module docstring)."""
    validate(config)
    _check_runnable(config)
    workdir = make_workdir(workdir)
    # A rerun into the same folder must not leave the old completion marker standing
    # while the new results are half written.
    (workdir / SUMMARY_FILE).unlink(missing_ok=True)
    _atomic_write(workdir / "config.json", _config_json(config))

    pair = models_lib.load_pair(config)
    prompts = encode_prompts(config, pair)
    if not prompts:
        raise ValueError("the prompt selection is empty")
    order = _category_order(config, prompts)
    batches = _batches(prompts, order, int(config.batch_size))
    eos = list(pair.tokenizer.eos_ids) if (config.stop_at_eos and pair.tokenizer) else []
    log.info(
        "%s: %d prompts in %d batches, gamma=%d, %s",
        pair.label,
        len(prompts),
        len(batches),
        config.gamma,
        config.dtype,
    )
    results = _decode_batches(config, pair, batches, eos, progress)
    cost = _measure_cost(config, pair, prompts)

    env = _environment()
    extra = {
        "target": pair.target.spec,
        "draft": pair.draft.spec if pair.draft else None,  # a draft model's spec, if any
        "drafter_kind": _drafter(config).kind,
        "tree": str(config.tree),
        "adaptive_gamma": bool(config.adaptive_gamma),
        "dtype": str(config.dtype),
        "synthetic_weights": pair.synthetic,
        "prompts_truncated": sum(p.truncated for p in prompts),
        "device_kind": env["device_kind"],
        "backend": env["backend"],
    }
    summaries = _summaries(config, pair, results, order, cost, extra)
    greedy = float(config.sampling.temperature) == 0.0
    overall = next(s for s in summaries if s.category == "all")
    if greedy and overall.exact is False:
        log.warning(
            "%s: greedy speculative output differs from autoregressive in %d rows "
            "(expected only from low-precision near-ties, e.g. bfloat16)",
            pair.label,
            overall.extra.get("rows_mismatched"),
        )

    _atomic_write(workdir / "metrics.jsonl", "".join(s.to_json() + "\n" for s in summaries))
    _atomic_write(workdir / "results.csv", metrics.write_csv(summaries))
    gens = _generations(pair, results, greedy)
    _atomic_write(
        workdir / "generations.jsonl", "".join(json.dumps(_jsonable(g)) + "\n" for g in gens)
    )
    summary = {"summary": overall.to_dict(), "environment": env, "complete": True}
    _atomic_write(workdir / SUMMARY_FILE, json.dumps(_jsonable(summary), indent=2))
    if plots:
        write_plots(summaries, workdir / "plots")
    return RunResult(workdir, summaries)


# --------------------------------------------------------------------------------------------
# Sweeps.


def point_name(point: Mapping[str, Any]) -> str:
    """A folder name for a sweep point: ``{"gamma": 2}`` -> ``gamma=2``."""
    if not point:
        return "base"
    text = ",".join(f"{k}={v}" for k, v in point.items())
    return re.sub(r"[^\w.=,+-]", "_", text)


def parse_points(text: str) -> list[dict[str, str]]:
    """``"gamma=1;gamma=2,sampling.temperature=0.7"`` -> a list of override dicts."""
    return [parse_arg(part) for part in text.split(";") if part.strip()]


def is_complete(workdir: str | os.PathLike[str], config: ml_collections.ConfigDict) -> bool:
    """The folder holds a finished run of exactly this config."""
    workdir = Path(workdir)
    try:
        done = json.loads((workdir / SUMMARY_FILE).read_text(encoding="utf-8"))
        stored = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # Keys the schema gained after the run was made count as their defaults: a finished run
    # of an older schema is still complete for a config that leaves the new keys alone.
    stored = _merged(base_config().to_dict(), stored)
    return bool(done.get("complete")) and stored == json.loads(_config_json(config))


def _merged(defaults: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` over ``defaults``, group by group."""
    out = dict(defaults)
    for k, v in values.items():
        is_group = isinstance(v, Mapping) and isinstance(out.get(k), dict)
        out[k] = _merged(out[k], v) if is_group else v
    return out


@dataclasses.dataclass
class SweepResult:
    workdir: Path
    runs: list[RunResult]

    @property
    def summaries(self) -> list[RunSummary]:
        return [s for r in self.runs for s in r.summaries]

    @property
    def computed(self) -> list[str]:
        return [r.workdir.name for r in self.runs if not r.skipped]


def run_sweep(
    config: ml_collections.ConfigDict,
    points: Sequence[Mapping[str, Any]],
    workdir: str | os.PathLike[str],
    *,
    progress: bool = True,
    command: str | None = None,
    run_fn: Callable[..., RunResult] | None = None,
) -> SweepResult:
    """Run every point (overrides of ``config``), one subfolder each, skipping finished ones.

    Every point's config is built and validated before anything runs. A point is skipped
    when its folder holds a complete run of the same config; a folder of a different config
    (the sweep was edited) is run again. ``run_fn`` replaces :func:`run_experiment` (tests).
    """
    from tqdm.auto import tqdm

    workdir = Path(workdir)
    points = [dict(p) for p in points]
    if not points:
        raise ConfigError("the sweep has no points: pass [{}] to run the base config alone")
    names = [point_name(p) for p in points]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep points repeat: {names}")
    configs = []
    for name, point in zip(names, points, strict=True):
        try:
            configs.append(finalize(config, point))
        except ConfigError as error:
            raise ConfigError(f"sweep point {name}: {error}") from None
    for c in configs:
        _check_runnable(c)
    make_workdir(workdir)
    command = command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    invocations = []
    if (workdir / "sweep.json").is_file():  # resuming: keep the command that started it
        try:
            previous = json.loads((workdir / "sweep.json").read_text(encoding="utf-8"))
            invocations = list(previous.get("invocations", []))
        except ValueError:
            pass
    invocations.append(command)
    _atomic_write(
        workdir / "sweep.json",
        json.dumps(
            _jsonable(
                {
                    "command": invocations[0],
                    "invocations": invocations,
                    "base_config": config.to_dict(),
                    "points": points,
                    "names": names,
                }
            ),
            indent=2,
        ),
    )
    run_fn = run_fn or run_experiment
    runs = []
    bar = tqdm(
        list(zip(names, configs, strict=True)), desc="sweep", unit="point", disable=not progress
    )
    for name, point_config in bar:
        bar.set_postfix_str(name)
        point_dir = workdir / "points" / name
        if is_complete(point_dir, point_config):
            log.info("sweep: %s is complete, skipping", name)
            runs.append(RunResult(point_dir, metrics.read_jsonl(point_dir / "metrics.jsonl"), True))
            continue
        runs.append(run_fn(point_config, point_dir, progress=progress, plots=True))
    result = SweepResult(workdir, runs)
    _write_merged(workdir, result.summaries)
    write_report(workdir)
    return result


def _write_merged(workdir: Path, summaries: Sequence[RunSummary]) -> None:
    _atomic_write(workdir / "metrics.jsonl", "".join(s.to_json() + "\n" for s in summaries))
    _atomic_write(workdir / "results.csv", metrics.write_csv(summaries))


# --------------------------------------------------------------------------------------------
# Plots and reports.


def collect_summaries(workdir: str | os.PathLike[str]) -> list[RunSummary]:
    """Summaries of a run folder, or of every COMPLETE point of a sweep folder."""
    workdir = Path(workdir)
    points = workdir / "points"
    if points.is_dir():
        out = []
        for d in sorted(points.iterdir()):
            if (d / SUMMARY_FILE).is_file() and (d / "metrics.jsonl").is_file():
                out += metrics.read_jsonl(d / "metrics.jsonl")
        return out
    if (workdir / "metrics.jsonl").is_file():
        if not (workdir / SUMMARY_FILE).is_file():  # written last: interrupted, or running
            raise FileNotFoundError(
                f"{workdir} holds an unfinished run (no {SUMMARY_FILE}): interrupted or still "
                "running; run it again to complete it"
            )
        return metrics.read_jsonl(workdir / "metrics.jsonl")
    raise FileNotFoundError(f"{workdir} holds neither a run (metrics.jsonl) nor a sweep (points/)")


def write_plots(summaries: Sequence[RunSummary], folder: str | os.PathLike[str]) -> dict[str, Path]:
    """The standard plots of a run or sweep as PNGs in ``folder``; returns name -> path.

    A failing plot is logged and skipped: the numbers are already on disk, and the plots can
    be made again from them with ``experiments/report.py``.
    """
    from specjax.eval import plots

    folder = Path(folder)
    overall = [s for s in summaries if s.category == "all"]
    by_cat = [s for s in summaries if s.category != "all"] or overall
    has_c = any(math.isfinite(s.c) for s in summaries)
    todo = {
        "alpha_per_position": lambda p: plots.plot_alpha_per_position(
            {f"{s.label}, γ={s.gamma}": s.alpha_per_position for s in overall}, p
        ),
        "accept_histogram": lambda p: plots.plot_accept_histogram(
            {f"{s.label}, γ={s.gamma}": s.accept_hist for s in overall}, p
        ),
    }
    if len({s.label for s in overall}) > 1:
        # A sweep over drafters: a bar per run. Curves per label and category would be
        # mostly single points, and the largest gamma would be one drafter's only.
        todo["speedup_by_drafter"] = lambda p: plots.plot_speedup_by_run(overall, p)
        todo["speedup_vs_gamma"] = lambda p: plots.plot_speedup_vs_gamma(
            overall, p, title="Speedup vs draft length (all prompts)"
        )
    else:
        todo["speedup_vs_gamma"] = lambda p: plots.plot_speedup_vs_gamma(by_cat, p)
        todo["speedup_vs_gamma_all"] = lambda p: plots.plot_speedup_vs_gamma(
            overall, p, title="Speedup vs draft length (all prompts)"
        )
        todo["alpha_per_position_by_category"] = lambda p: plots.plot_alpha_per_position(
            [s for s in by_cat if s.gamma == max(x.gamma for x in by_cat)], p
        )
    if has_c:
        todo["predicted_vs_measured"] = lambda p: plots.plot_predicted_vs_measured(
            [s for s in overall if math.isfinite(s.c)], p
        )
    written = {}
    for name, make in todo.items():
        path = folder / f"{name}.png"
        try:
            make(path)
            written[name] = path
        except Exception as error:  # noqa: BLE001 - a plot must not cost the results
            log.warning("plot %s failed: %r", name, error)
    return written


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report_markdown(
    summaries: Sequence[RunSummary],
    *,
    title: str = "Speculative decoding results",
    command: str | None = None,
    config: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    plots: Mapping[str, str] | None = None,
) -> str:
    """A markdown section for docs/benchmarks.md: settings, the table per gamma (all prompts)
    with the cost model beside the measurement, speedup per category, and plots."""
    overall = sorted(
        (s for s in summaries if s.category == "all"), key=lambda s: (s.label, s.gamma)
    )
    cats = [s for s in summaries if s.category != "all"]
    out = [f"## {title}", ""]
    if command:
        out += ["Command:", "", "```bash", command, "```", ""]
    facts = []
    if config:
        p, smp = config.get("prompts", {}), config.get("sampling", {})
        chat = p.get("chat_template") and p.get("name") != SYNTHETIC
        facts += [
            f"prompts: {p.get('name')} (subset {p.get('subset') or 'all'}, seed {p.get('seed')}"
            f"{', categories ' + p['categories'] if p.get('categories') else ''}"
            f"{', chat template' if chat else ''})",
            f"max_new_tokens {config.get('max_new_tokens')}, batch {config.get('batch_size')}, "
            f"dtype {config.get('dtype')}, temperature {smp.get('temperature')}, "
            f"repeats {config.get('repeats')} (medians; compile time excluded)",
        ]
    if environment:
        facts.append(
            f"device: {environment.get('device_kind')} ({environment.get('backend')}), "
            f"jax {environment.get('jax')}, {environment.get('time')}"
        )
    if any(s.extra.get("synthetic_weights") for s in overall):
        facts.append(
            "**synthetic weights** (random or perturbed models): mechanism and step costs "
            "only, not the acceptance of real models"
        )
    out += [f"- {f}" for f in facts] + ([""] if facts else [])

    header = [
        "pair",
        "γ",
        "τ",
        "τ acc",
        "α",
        "speedup",
        "predicted",
        "c",
        "tok/s spec",
        "tok/s AR",
        "exact",
        "prompts",
        "compile s (spec/AR)",
    ]
    rows = [
        [
            s.label,
            s.gamma,
            s.tau,
            s.acceptance_tau,
            s.alpha,
            s.speedup,
            s.predicted_speedup,
            s.c,
            s.tokens_per_s,
            s.ar_tokens_per_s,
            s.exact,
            s.num_prompts,
            f"{_fmt(s.spec_compile_seconds, 1)} / {_fmt(s.ar_compile_seconds, 1)}",
        ]
        for s in overall
    ]
    out += [_table(header, rows), ""]
    out.append(
        "τ: tokens emitted per verification call (bonus included); τ acc: accepted drafts + 1 "
        "per call before an EOS or the budget cut them (the acceptance process, ≥ τ); α: "
        "P(draft token accepted | reached), pooled over positions; predicted: Leviathan et "
        "al. (1−α^(γ+1))/((1−α)(γc+1)) with the measured α and c (c = draft step / target "
        "step)."
    )
    out.append("")
    for label in dict.fromkeys(s.label for s in overall):
        finite = [s for s in overall if s.label == label and math.isfinite(s.alpha)]
        if not finite:
            continue
        best = max(finite, key=lambda s: s.speedup if math.isfinite(s.speedup) else -1)
        line = f"- {label}: best measured γ = {best.gamma} (speedup {_fmt(best.speedup)})"
        if len(finite) == 1:  # one gamma of this pair: nothing to choose between
            line = f"- {label}: γ = {best.gamma} only (speedup {_fmt(best.speedup)})"
        if math.isfinite(best.c):
            alpha = float(np.mean([s.alpha for s in finite]))
            g, sp = cost_model.best_gamma(alpha, best.c, max_gamma=16)
            line += f"; the model's best γ at α={alpha:.2f}, c={best.c:.2f}: {g} ({sp:.2f}×)"
        out.append(line)
    out.append("")

    if cats:
        gammas = sorted({s.gamma for s in cats})
        labels = list(dict.fromkeys(s.label for s in cats))
        categories = list(dict.fromkeys(s.category for s in cats))
        index = {(s.label, s.category, s.gamma): s for s in cats}
        out += ["Speedup (τ) per category:", ""]

        def cell(label: str, c: str, g: int) -> str:
            s = index.get((label, c, g))
            return "–" if s is None else f"{_fmt(s.speedup)} ({_fmt(s.tau)})"

        if len(labels) == 1:  # a sweep over gamma: one column per gamma
            rows = [
                [label, c, *[cell(label, c, g) for g in gammas]]
                for label in labels
                for c in categories
            ]
            out += [_table(["pair", "category", *[f"γ={g}" for g in gammas]], rows), ""]
        else:  # a sweep over drafters: one row per drafter and gamma, one column per category
            runs = list(dict.fromkeys((s.label, s.gamma) for s in cats))
            rows = [[label, g, *[cell(label, c, g) for c in categories]] for label, g in runs]
            out += [_table(["pair", "γ", *categories], rows), ""]
        out += ["α per draft position (all prompts):", ""]
        width = max((len(s.alpha_per_position) for s in overall), default=0)
        rows = [
            [s.label, s.gamma, *[_fmt(a) for a in s.alpha_per_position]]
            + ["–"] * (width - len(s.alpha_per_position))
            for s in overall
        ]
        out += [_table(["pair", "γ", *[f"α{i + 1}" for i in range(width)]], rows), ""]
    for name, path in (plots or {}).items():
        out += [f"![{name}]({path})", ""]
    return "\n".join(out)


def _title(summaries: Sequence[RunSummary]) -> str:
    labels = list(dict.fromkeys(s.label for s in summaries))
    if len(labels) == 1:
        return f"Speculative decoding: {labels[0]}"
    targets = {str(s.extra.get("target", "")) for s in summaries}
    target = f"{targets.pop()}, " if len(targets) == 1 and "" not in targets else ""
    return f"Speculative decoding: {target}{len(labels)} drafters"


def write_report(
    workdir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
) -> str:
    """Make ``report.md`` (and plots) from a sweep or run folder; return the markdown."""
    workdir = Path(workdir)
    summaries = collect_summaries(workdir)
    if not summaries:
        raise FileNotFoundError(f"{workdir} holds no complete run yet")
    command, config, env = None, None, None
    if (workdir / "sweep.json").is_file():
        sweep = json.loads((workdir / "sweep.json").read_text(encoding="utf-8"))
        command, config = sweep.get("command"), sweep.get("base_config")
        first = workdir / "points" / sweep["names"][0] / SUMMARY_FILE
        if first.is_file():
            env = json.loads(first.read_text(encoding="utf-8")).get("environment")
    else:
        if (workdir / "config.json").is_file():
            config = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
        if (workdir / SUMMARY_FILE).is_file():
            env = json.loads((workdir / SUMMARY_FILE).read_text(encoding="utf-8")).get(
                "environment"
            )
    out_path = Path(out) if out is not None else workdir / "report.md"
    written = write_plots(summaries, workdir / "plots")
    rel = {
        name: os.path.relpath(path, out_path.parent).replace(os.sep, "/")
        for name, path in written.items()
        if name
        in ("speedup_by_drafter", "speedup_vs_gamma", "alpha_per_position", "predicted_vs_measured")
    }
    text = report_markdown(
        summaries,
        title=title or _title(summaries),
        command=command,
        config=config,
        environment=env,
        plots=rel,
    )
    _atomic_write(out_path, text)
    return text
