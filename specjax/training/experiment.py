"""A drafter-training experiment from one config: data, drafter, objective, training, export,
and the held-out α/τ comparison with the untrained drafters.

    from specjax.training import experiment
    result = experiment.run_training(config, "runs/eagle")       # resumes if interrupted
    rows = experiment.compare(config, result)                    # α, τ on held-out prompts

Files in the workdir:
  config.json     the config as run
  data.npz        target answers + features (reused while the data settings stay the same)
  checkpoints/    orbax, resumable
  metrics.jsonl   training and held-out metrics
  drafter/        the exported drafter: heads (`specjax.drafters.heads.load_heads`) or a
                  draft model (`specjax.checkpoints.load`)
  eval.json, eval.md   the comparison (written by experiments/train_draft.py --eval)

Dimension legend: none here (see data.py and objectives.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from specjax.checkpoints import LoadedModel, load_model
from specjax.drafters import heads
from specjax.fileio import atomic_write
from specjax.models.transformer import Model, abstract_model
from specjax.training import data as data_lib
from specjax.training import objectives
from specjax.training.config import feature_layers, train_settings
from specjax.training.trainer import TrainResult, train

DRAFTER_DIR = "drafter"


@dataclasses.dataclass
class TrainingRun:
    """Fields: target: the LoadedModel; drafter: (Drafter, params) ready for
    specjax.generate; drafter_path: where it was exported; train: TrainResult; data_info;
    heldout_drafting: EAGLE heads only (else None), `diagnostics.drafting_check` on the
    held-out prompts: α₁ when the head drafts (γ = eval.gamma) beside step 1 at the draft
    starts. It predicts τ where the held-out top-1 (every position) overstates it."""

    target: LoadedModel
    drafter: tuple[Any, Any]
    drafter_path: Path
    train: TrainResult
    data_info: dict[str, Any]
    heldout_drafting: dict[str, Any] | None = None


def eos_ids(target: LoadedModel) -> Sequence[int]:
    """The target's end-of-sequence ids (none without a tokenizer): every generation of a run
    (its training answers, the held-out check, the comparison) stops at them alike."""
    return () if target.tokenizer is None else target.tokenizer.eos_ids


def _prompts(config: ml_collections.ConfigDict, target: LoadedModel | Any) -> list[list[int]]:
    """`target`: the LoadedModel, or for text sources just its tokenizer."""
    d = config.data
    if d.source == "random":
        return data_lib.random_prompts(
            target.config.vocab_size, d.num_prompts, d.max_prompt_tokens, d.seed
        )
    tokenizer = target.tokenizer if isinstance(target, LoadedModel) else target
    if tokenizer is None:
        raise ValueError(f"data.source={d.source!r} needs a tokenizer; {config.target} has none")
    if d.source in ("sharegpt", "sharegpt_turns"):
        return data_lib.sharegpt_prompts(
            tokenizer, d.num_prompts, d.max_prompt_tokens, d.seed, d.source == "sharegpt_turns"
        )
    return data_lib.stdlib_prompts(tokenizer, d.num_prompts, d.max_prompt_tokens, d.seed)


def prompts_path(config: ml_collections.ConfigDict, workdir: Path) -> Path:
    """Where the tokenized prompts of this config are cached: beside its data file."""
    data = data_path(config, workdir)
    return data.with_name(data.stem + ".prompts.json")


def data_path(config: ml_collections.ConfigDict, workdir: Path) -> Path:
    return Path(config.data.path) if config.data.path else workdir / "data.npz"


def load_prompts(
    config: ml_collections.ConfigDict, target: LoadedModel | Any, workdir: Path
) -> list[list[int]]:
    """The training prompts' token ids, cached in a JSON file keyed by the settings they
    depend on. Tokenizing thousands of ShareGPT prompts takes minutes in the pure-Python
    tokenizer: done once on any machine (`experiments/train_draft.py --prompts_only`), the
    file travels to the accelerator with the run and the data is generated there.
    `target`: the LoadedModel, or (text sources) only its tokenizer."""
    d = config.data
    settings = {
        "target": config.target,
        "source": d.source,
        "num_prompts": d.num_prompts,
        "max_prompt_tokens": d.max_prompt_tokens,
        "seed": d.seed,
    }
    key = data_lib.data_key(settings)
    path = prompts_path(config, workdir)
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("settings_key") == key:
            return cached["prompts"]
    prompts = _prompts(config, target)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"settings": settings, "settings_key": key, "prompts": prompts}
    atomic_write(path, json.dumps(blob))
    return prompts


def feature_target(config: ml_collections.ConfigDict, target: LoadedModel) -> tuple[Model, Any]:
    """(the target Model whose hidden states are this config's features, its params): with
    head.feature_layers, the target returning those layers' outputs too."""
    layers = feature_layers(config, target.config.num_layers)
    return target.model.with_feature_layers(layers), target.params


def load_data(
    config: ml_collections.ConfigDict, target: LoadedModel, workdir: Path, progress: bool = True
) -> data_lib.DraftData:
    """The training data of this config: loaded when built before with the same settings."""
    settings = {"target": config.target, "dtype": config.dtype, **config.data.to_dict()}
    settings.pop("path")
    settings.pop("batch_size")  # does not change the data
    layers = feature_layers(config, target.config.num_layers)
    if layers:  # stored features are (n + 1) D wide (absent from EAGLE-1 settings: keys kept)
        settings["feature_layers"] = list(layers)
    # Online runs read only the tokens: a file with features serves them too.
    online = settings.pop("features") == "online"

    def build() -> data_lib.DraftData:
        return data_lib.build_data(
            feature_target(config, target),
            load_prompts(config, target, workdir),
            max_new_tokens=config.data.max_new_tokens,
            temperature=config.data.temperature,
            eos_ids=eos_ids(target),
            batch_size=config.data.batch_size,
            seed=config.data.seed,
            info={"source": config.data.source, "target": config.target},
            progress=progress,
            features=not online,
        )

    data = data_lib.load_or_build(
        data_path(config, workdir), settings, build, needs_features=not online
    )
    # An online run leaves a stored file's features on the host (its steps compute their own).
    return dataclasses.replace(data, hidden=None) if online else data


def draft_model_init(
    config: ml_collections.ConfigDict, target: LoadedModel
) -> tuple[Model, dict[str, Any]]:
    """The DistillSpec draft before training: the target's first `num_layers` layers
    (early-exit) or random layers of the target's shape (random), with the target's embedding
    and final norm, as a pure dict."""
    k = config.draft.num_layers
    if k >= target.config.num_layers:
        raise ValueError(
            f"draft.num_layers={k} must be below the target's {target.config.num_layers}"
        )
    draft_config = target.config.replace(num_layers=k)
    pure = nnx.to_pure_dict(target.params)
    if config.draft.init == "early-exit":
        blocks = jax.tree.map(lambda layers: layers[:k], pure["blocks"])
    else:
        from specjax.models.transformer import init_model

        _, random_params = init_model(draft_config, seed=config.head.seed)
        blocks = nnx.to_pure_dict(random_params)["blocks"]
    model, _ = abstract_model(draft_config, jnp.float32)
    params = {**pure, "blocks": blocks}
    return model, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def _widens(loaded: Any, drafter: Any) -> bool:
    """Whether `head.init_from`'s heads are an EAGLE-1 head of the configured EAGLE-3-input
    head (`heads.widen_to_feature_layers`): same decoder layer, no feature layers of its own."""
    eagle = heads.EagleDrafter
    return (
        isinstance(loaded, eagle)
        and isinstance(drafter, eagle)
        and not loaded.feature_layers
        and bool(drafter.feature_layers)
        and loaded.block_config == drafter.block_config
    )


def run_training(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    progress: bool = True,
    stop_at_step: int | None = None,
    stop_after_s: float | None = None,
) -> TrainingRun:
    """Data -> training (resumable) -> exported drafter. See the module docstring."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"workdir {workdir} is a file, not a folder: pass a folder path")
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write(workdir / "config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True))
    target = load_model(config.target, config.dtype)
    layers = feature_layers(config, target.config.num_layers)
    data = load_data(config, target, workdir, progress)
    train_data, eval_data = data.split(config.data.num_eval)
    M = data.max_new_tokens
    io = heads.target_io(target.params)
    # Heads and drafts train in float32 whatever the target's dtype.
    io32 = jax.tree.map(lambda x: None if x is None else jnp.asarray(x, jnp.float32), io)
    h = config.head
    if config.kind in ("eagle", "medusa"):
        head_config = (
            {"ffn_dim": h.ffn_dim or None, "feature_layers": layers}
            if config.kind == "eagle"
            else {"num_heads": h.num_heads}
        )
        drafter, params = heads.init_heads(
            config.kind, target.model, target.params, seed=h.seed, **head_config
        )
        if config.kind == "eagle":
            loss_fn = objectives.eagle_loss(
                drafter, M, h.reg_weight, h.cls_weight, h.feature_noise, h.unroll_steps
            )
        else:
            loss_fn = objectives.medusa_loss(drafter, M, h.head_decay)
        counts = answer_counts(train_data, target.config.vocab_size)
        vocab_ids = None
        if h.train_vocab:  # scored over the train_vocab most frequent answer tokens
            if h.train_vocab > target.config.vocab_size:
                raise ValueError(
                    f"head.train_vocab={h.train_vocab} exceeds the target's vocabulary "
                    f"({target.config.vocab_size})"
                )
            vocab_ids = heads.most_frequent(counts, h.train_vocab)
            io32 = heads.with_draft_vocab({"io": io32}, vocab_ids)["io"]
        if h.init_from:  # warm start, e.g. fine-tuning EAGLE-1 heads with unroll_steps > 1
            sha = target.metadata.get("sha256")
            loaded, loaded_params = heads.load_heads(
                h.init_from, target.model, target.params, target_sha256=sha
            )
            if _widens(loaded, drafter):  # an EAGLE-1 head starts an EAGLE-3-input run
                loaded, loaded_params = heads.widen_to_feature_layers(
                    loaded, loaded_params, drafter.feature_layers
                )
            if loaded != drafter:
                raise ValueError(
                    f"head.init_from={h.init_from!r} holds {loaded.kind} heads "
                    f"{loaded.head_config()}, not the {config.kind} heads configured here"
                )
            params = loaded_params
        trainable, frozen = params["head"], {"io": io32}
    else:
        drafter, draft_params = draft_model_init(config, target)
        keys = tuple(draft_params)
        if config.draft.trainable == "blocks":
            keys = ("blocks", "final_norm")
        trainable, frozen_draft = objectives.split_trees(draft_params, keys)
        frozen = {"draft": frozen_draft, "io": io32}
        loss_fn = objectives.distill_loss(drafter, target.config, M)

    if config.data.features == "online":  # the step runs the target over its batch
        loss_fn = objectives.with_target_features(loss_fn, feature_target(config, target)[0])
        frozen = {**frozen, "target": target.model.decode_params(target.params)}
    result = train(
        loss_fn,
        trainable,
        frozen,
        train_data,
        train_settings(config),
        workdir,
        eval_data=eval_data if eval_data.num_sequences else None,
        progress=progress,
        stop_at_step=stop_at_step,
        stop_after_s=stop_after_s,
    )
    metadata = {
        "config": config.to_dict(),
        "target": {"spec": config.target, "sha256": target.metadata.get("sha256")},
        "steps": result.step,
        "data": {k: v for k, v in data.info.items() if k != "settings"},
        "last_metrics": result.history[-1] if result.history else {},
    }
    path = workdir / DRAFTER_DIR
    if config.kind == "distill":
        from specjax.checkpoints.orbax import save_model

        params = objectives.merge_trees(result.params, frozen["draft"])
        save_model(path, drafter.config, params, {**metadata, "dtype": "float32"})
        ready = (drafter, params)
    else:
        saved = {"head": result.params, "io": io}
        ready = (drafter, saved)
        if vocab_ids is not None:  # drafting as trained: over the same tokens
            ready = (drafter, heads.with_draft_vocab(saved, vocab_ids))
        if config.kind == "eagle" and eval_data.num_sequences and config.eval.gamma:
            heldout_drafting = heldout_drafting_check(config, target, ready, eval_data)
            metadata["heldout_drafting"] = heldout_drafting
        heads.save_heads(
            path, drafter, saved, metadata, token_counts=counts, train_vocab=h.train_vocab
        )
    return TrainingRun(target, ready, path, result, data.info, metadata.get("heldout_drafting"))


def heldout_drafting_check(
    config: ml_collections.ConfigDict,
    target: LoadedModel,
    drafter: tuple[Any, Any],
    eval_data: data_lib.DraftData,
) -> dict[str, Any]:
    """`diagnostics.drafting_check` of trained EAGLE heads on the held-out prompts, whose
    answers `eval_data` holds: the head drafts them (greedy, γ = eval.gamma) and its α₁ is set
    beside its teacher-forced step 1 at the positions where the drafts started."""
    from specjax.training import diagnostics

    prompts = [
        eval_data.tokens[n, : eval_data.gen_start[n]].tolist()
        for n in range(eval_data.num_sequences)
    ]
    # Step 1 at the draft starts reads the target's features (computed here for online data).
    eval_data = eval_data.with_features(feature_target(config, target), config.data.batch_size)
    check = diagnostics.drafting_check(
        target.pair, *drafter, eval_data, prompts, eos_ids(target), gamma=config.eval.gamma,
        max_new_tokens=eval_data.max_new_tokens,
    )  # fmt: skip
    return {"gamma": config.eval.gamma, "prompts": len(prompts), **check}


def answer_counts(data: data_lib.DraftData, vocab_size: int) -> np.ndarray:
    """How often each token occurs in the target's answers [V] (prompts excluded): the
    ranking of a reduced draft vocabulary (`heads.load_heads(draft_vocab=N)`)."""
    positions_NxT = np.arange(data.tokens.shape[1])[None, :]
    in_answer_NxT = positions_NxT >= data.gen_start[:, None]
    answer_NxT = in_answer_NxT & (positions_NxT < data.lengths[:, None])
    return np.bincount(np.asarray(data.tokens)[answer_NxT], minlength=vocab_size)


# --------------------------------------------------------------------------------------------
# Held-out comparison.


def eval_prompts(config: ml_collections.ConfigDict, target: LoadedModel) -> list[list[int]]:
    """HumanEval + MT-Bench prompts (chat-formatted), disjoint from the ShareGPT training
    prompts; random prompts for random targets."""
    per_set = config.eval.per_set
    if target.tokenizer is None:
        return data_lib.random_prompts(target.config.vocab_size, 2 * per_set, 16, seed=99)
    from specjax.eval.prompts import chat_prompt_ids, load_prompt_texts

    return chat_prompt_ids(target.tokenizer, load_prompt_texts(None, per_set))


def baseline_drafters(
    config: ml_collections.ConfigDict, target: LoadedModel
) -> dict[str, tuple[Any, Any]]:
    """The untrained alternatives named in config.eval.compare, by their registry labels:
    kinds of `specjax.drafters.registry` built with its defaults (early-exit at
    eval.exit_layer, 0 = the registry's default), eagle / medusa as freshly initialised
    heads."""
    from specjax.drafters import registry

    out: dict[str, tuple[Any, Any]] = {}
    for name in [n.strip() for n in config.eval.compare.split(",") if n.strip()]:
        try:
            kind = registry.canonical_kind(name)
        except ValueError as error:
            raise ValueError(f"eval.compare: {error}") from None
        if kind in ("eagle", "medusa"):
            out[f"{kind}(untrained)"] = heads.init_heads(kind, target.model, target.params)
            continue
        if kind == "model":
            raise ValueError("eval.compare: kind model needs a draft model; compare untrained "
                             "drafters: ngram, early-exit, eagle, medusa")  # fmt: skip
        knobs = {"exit_layer": int(config.eval.exit_layer)} if kind == "early-exit" else {}
        spec = registry.DrafterSpec.create(kind, **knobs)
        drafter = registry.build(spec, target.pair)
        label = spec.label(num_layers=target.config.num_layers)
        out[label] = drafter if isinstance(drafter, tuple) else (drafter, None)
    return out


def load_trained(path: str | Path, target: LoadedModel) -> tuple[Any, Any]:
    """A drafter exported by `run_training`: heads (heads.json) or a draft model."""
    if not Path(path).is_dir():
        path = heads.resolve_heads(path)  # a published name
    path = Path(path)
    if heads.is_saved_heads(path):
        return heads.load_heads(
            path, target.model, target.params, target_sha256=target.metadata.get("sha256")
        )
    from specjax.checkpoints import load

    model, params, _ = load(path)
    return model, params


def compare(
    config: ml_collections.ConfigDict,
    run: TrainingRun,
    extra: dict[str, tuple[Any, Any]] | None = None,
    log=print,
    repeats: int = 0,
) -> list[dict[str, Any]]:
    """Greedy α (per draft position) and τ of the trained drafter and the untrained ones on the
    same held-out prompts, all rows in one batch; each checked equal to autoregressive.

    With `repeats` > 0, autoregressive decoding and every drafter are also timed
    (`specjax.eval.timing.timed`: a first, compiling call, then the median of `repeats`
    calls) and each row gets `seconds` (per batch), `ar_seconds` and `speedup` over
    autoregressive decoding of the same batch."""
    import specjax
    from specjax.eval.timing import timed

    target = run.target
    prompts = eval_prompts(config, target)
    common = dict(max_new_tokens=config.eval.max_new_tokens, eos_ids=eos_ids(target))
    reference, ar_timing = timed(
        specjax.generate, target.pair, None, prompts, **common, repeats=repeats
    )
    drafters = {f"{config.kind} (trained, {run.train.step} steps)": run.drafter}
    drafters.update(baseline_drafters(config, target))
    drafters.update(extra or {})
    rows = []
    for name, drafter in drafters.items():
        out, timing = timed(
            specjax.generate, target.pair, drafter, prompts,
            gamma=config.eval.gamma, repeats=repeats, **common,
        )  # fmt: skip
        alpha = out.acceptance_per_position
        row = {
            "drafter": name,
            "gamma": config.eval.gamma,
            "tau": round(float(out.tau), 3),
            "alpha_1": round(float(alpha[0]), 3),
            "alpha": [round(float(a), 3) for a in alpha],
            "accepted_per_drafted": round(
                float(np.sum(out.stats.accepted) / max(np.sum(out.stats.drafted), 1)), 3
            ),
            "target_calls": int(np.sum(out.target_calls)),
            "tokens": int(np.sum(out.num_generated)),
            "exact": out.token_lists() == reference.token_lists(),
            "seconds_incl_compile": round(timing.first_s, 1),
        }
        if repeats:
            row.update(
                seconds=round(timing.median_s, 4),
                ar_seconds=round(ar_timing.median_s, 4),
                speedup=round(ar_timing.median_s / timing.median_s, 2),
            )
        log(json.dumps(row))
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    from specjax.tables import markdown as table

    columns = ["drafter", "gamma", "tau", "alpha_1", "alpha", "target_calls", "tokens", "exact"]
    if rows and all("speedup" in row for row in rows):
        columns.append("speedup")

    def fmt(value: Any) -> str:
        return " ".join(f"{a:.2f}" for a in value) if isinstance(value, list) else str(value)

    return table(columns, [[row[c] for c in columns] for row in rows], fmt)
