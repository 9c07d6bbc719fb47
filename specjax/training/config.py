"""The schema of a drafter-training config (ml_collections), its defaults and its checks.

    config = base_config()                  # every key, with defaults
    config.kind = "eagle"; ...
    config = finalize(config, "train.num_steps=50,data.num_prompts=64")

Groups:
  kind      "eagle" | "medusa" | "distill": what is trained.
  target    model spec (specjax.checkpoints.specs): a registered name, a path, or random:<shape>.
  dtype     target dtype for data generation ("float32" | "bfloat16"); heads train in float32.
  data      prompts -> target answers -> features (specjax.training.data).
  head      EAGLE / Medusa hyperparameters and loss weights.
  draft     DistillSpec draft model: initialisation and what is trained.
  train     optimisation (specjax.training.trainer.TrainSettings fields).
  eval      held-out α/τ comparison after training (experiments/train_draft.py --eval).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from specjax.training.data import PROMPT_SOURCES
from specjax.training.trainer import TrainSettings

KINDS = ("eagle", "medusa", "distill")
DATA_FEATURES = ("stored", "online")
DRAFT_INITS = ("early-exit", "random")  # early_exit: the registry's alias, accepted
DRAFT_TRAINABLE = ("blocks", "all")


class ConfigError(ValueError):
    """A training config that cannot run (message names the key)."""


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.kind = "eagle"
    config.target = "smollm2-135m-instruct"
    config.dtype = "float32"

    config.data = ml_collections.ConfigDict()
    # sharegpt (first user turns) | sharegpt_turns (every user turn) | stdlib | random
    config.data.source = "sharegpt"
    config.data.num_prompts = 192
    config.data.num_eval = 16  # of num_prompts, held out for eval_* metrics
    config.data.max_prompt_tokens = 96
    config.data.max_new_tokens = 64
    config.data.temperature = 0.0  # the target's answers: greedy, like the decoding it serves
    config.data.batch_size = 16  # generation / feature batch
    config.data.seed = 0
    config.data.path = ""  # data .npz (default <workdir>/data.npz); share it between runs
    # stored: the target's features saved with the tokens ([N, T, D]: 28 GB for 24k Qwen
    # prompts) | online: only the tokens are saved and each training step runs the frozen
    # target over its batch (no feature file; a target forward added to every step)
    config.data.features = "stored"

    config.head = ml_collections.ConfigDict()
    config.head.num_heads = 4  # Medusa: heads (>= the gamma it will draft for)
    config.head.head_decay = 0.8  # Medusa: loss weight of head i is decay ** (i - 1)
    config.head.ffn_dim = 0  # EAGLE: MLP width of the head's layer (0: the target's)
    config.head.reg_weight = 1.0  # EAGLE: feature regression (SmoothL1)
    config.head.cls_weight = 0.1  # EAGLE: KL of the next-token distribution
    config.head.feature_noise = 0.1  # EAGLE: U(-a, a) on the input features
    config.head.unroll_steps = 1  # EAGLE: drafting steps replayed in training (1 = EAGLE-1)
    config.head.seed = 0
    config.head.init_from = ""  # start from exported heads (a drafter/ folder) instead of init
    # EAGLE / Medusa: score the LM head over the N tokens most frequent in the training answers
    # only (EAGLE-3's draft vocabulary; 0: every token). The heads then draft over them.
    config.head.train_vocab = 0
    # EAGLE: target layers whose outputs the head reads beside the last hidden state
    # (EAGLE-3's multi-layer features, through a fuse layer): "" none (EAGLE-1), "eagle3"
    # (a low, a middle and a high layer: outputs of layers 1, L // 2 - 1 and L - 4), or
    # 0-based layer indices "i,j,...".
    config.head.feature_layers = ""

    config.draft = ml_collections.ConfigDict()
    config.draft.init = "early-exit"  # early-exit (the target's first layers) | random
    config.draft.num_layers = 2
    config.draft.trainable = "blocks"  # blocks (+ final norm; embedding frozen) | all

    config.train = ml_collections.ConfigDict(dataclasses.asdict(TrainSettings()))

    config.eval = ml_collections.ConfigDict()
    config.eval.per_set = 4  # HumanEval + MT-Bench prompts each (held out from ShareGPT)
    config.eval.gamma = 3
    config.eval.max_new_tokens = 64
    # Untrained alternatives measured beside it: drafter kinds of specjax.drafters.registry.
    config.eval.compare = "ngram,early-exit"
    config.eval.exit_layer = 0  # early-exit: 0 = the registry's default, a third of the layers
    return config


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raises ConfigError naming the first bad key (an unknown key with the closest ones)."""
    from specjax.overrides import unknown_keys_message

    unknown = unknown_keys_message(config, base_config())
    if unknown:
        raise ConfigError(f"{unknown}; the schema is training.config.base_config()")
    checks = [
        (config.kind in KINDS, "kind", f"must be one of {KINDS}"),
        (config.dtype in ("float32", "bfloat16"), "dtype", "must be float32 or bfloat16"),
        (config.data.source in PROMPT_SOURCES, "data.source", f"must be one of {PROMPT_SOURCES}"),
        (config.data.num_prompts >= 2, "data.num_prompts", "must be >= 2"),
        (
            0 <= config.data.num_eval < config.data.num_prompts,
            "data.num_eval",
            "must be in [0, data.num_prompts)",
        ),
        (config.data.max_new_tokens >= 2, "data.max_new_tokens", "must be >= 2"),
        (config.data.max_prompt_tokens >= 2, "data.max_prompt_tokens", "must be >= 2"),
        (config.data.features in DATA_FEATURES, "data.features", f"must be one of {DATA_FEATURES}"),
        (config.head.num_heads >= 1, "head.num_heads", "must be >= 1"),
        (config.head.unroll_steps >= 1, "head.unroll_steps", "must be >= 1"),
        (config.head.train_vocab >= 0, "head.train_vocab", "must be >= 0 (0: every token)"),
        (
            _feature_layers_parse(config.head.feature_layers) is not None,
            "head.feature_layers",
            'must be "", "eagle3" or comma-separated layer indices',
        ),
        (
            config.kind == "eagle" or not config.head.feature_layers,
            "head.feature_layers",
            "applies to eagle heads only",
        ),
        (
            config.kind != "distill" or config.head.train_vocab == 0,
            "head.train_vocab",
            "applies to eagle and medusa heads, not to a distilled draft model",
        ),
        (_init(config) in DRAFT_INITS, "draft.init", f"must be one of {DRAFT_INITS}"),
        (
            config.draft.trainable in DRAFT_TRAINABLE,
            "draft.trainable",
            f"must be one of {DRAFT_TRAINABLE}",
        ),
        (config.draft.num_layers >= 1, "draft.num_layers", "must be >= 1"),
        (config.train.num_steps >= 1, "train.num_steps", "must be >= 1"),
        (
            1 <= config.train.batch_size <= config.data.num_prompts - config.data.num_eval,
            "train.batch_size",
            "must be in [1, data.num_prompts - data.num_eval]",
        ),
        (config.train.log_every >= 1, "train.log_every", "must be >= 1"),
        (config.train.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1"),
        (config.eval.gamma >= 1, "eval.gamma", "must be >= 1"),
        (
            config.kind != "medusa" or config.eval.gamma <= config.head.num_heads,
            "eval.gamma",
            "must be <= head.num_heads for Medusa (head i drafts position i)",
        ),
    ]
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(f"{key} {message} (got {_get(config, key)!r})")
    return config


def advice(config: ml_collections.ConfigDict) -> list[str]:
    """Settings that train without error but are known to give a head that drafts poorly, each
    as one sentence saying what to do instead (`experiments/train_draft.py` prints them)."""
    notes = []
    multi_layer = config.kind == "eagle" and bool(config.head.feature_layers)
    if multi_layer and config.head.unroll_steps == 1:
        # An EAGLE-3-input head is fed the fused target layers at its first draft step and its
        # own output from the second on; with unroll_steps = 1 training never shows it the
        # latter. Measured on SmolLM2-135M (H200, eighteenth session, 8,000 steps; chain of 4,
        # 12 prompts): alpha at draft steps 1 / 2 = 0.64 / 0.09 (float32 run), and 0.59 / 0.60
        # after 1,500 more steps with unroll_steps = 3 (bfloat16 run).
        notes.append(
            f"head.feature_layers={config.head.feature_layers!r} with head.unroll_steps=1: the "
            "head never trains on its own features, so its drafts fail past the first token; "
            "fine-tune it with head.unroll_steps >= 2 (a -hass preset) before drafting with it"
        )
    return notes


def _feature_layers_parse(text: str) -> str | tuple[int, ...] | None:
    """head.feature_layers parsed: "eagle3", a tuple of ints, or None when it is neither."""
    text = str(text).strip()
    if text == "eagle3":
        return text
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        return None


def feature_layers(config: ml_collections.ConfigDict, num_layers: int) -> tuple[int, ...]:
    """head.feature_layers for a target of `num_layers` layers ("eagle3" resolved)."""
    return resolve_feature_layers(config.head.feature_layers, num_layers)


def resolve_feature_layers(text: str, num_layers: int) -> tuple[int, ...]:
    """ "" -> (), "eagle3" -> (1, L // 2 - 1, L - 4), "i,j" -> (i, j)."""
    parsed = _feature_layers_parse(text)
    if parsed is None:
        raise ValueError(f'feature layers must be "", "eagle3" or layer indices, got {text!r}')
    if parsed == "eagle3":
        return (1, num_layers // 2 - 1, num_layers - 4)
    return parsed


def _init(config: ml_collections.ConfigDict) -> str:
    """draft.init with the registry's alias resolved (early_exit -> early-exit)."""
    from specjax.drafters.registry import ALIASES

    return ALIASES.get(str(config.draft.init), str(config.draft.init))


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def finalize(
    config: ml_collections.ConfigDict, arg: str | Mapping[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """Applies `arg` ("k=v,..." or a mapping), validates and locks (what get_config returns)."""
    from specjax.overrides import ConfigError as RunnerConfigError
    from specjax.overrides import apply_overrides, parse_arg

    try:
        overrides = parse_arg(arg) if isinstance(arg, str | None) else dict(arg)
        config = apply_overrides(config, overrides)
    except RunnerConfigError as error:
        raise ConfigError(str(error)) from None
    config = validate(config)
    config.draft.init = _init(config)
    config.lock()
    return config


def train_settings(config: ml_collections.ConfigDict) -> TrainSettings:
    return TrainSettings(**config.train.to_dict())
