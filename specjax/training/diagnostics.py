"""Diagnostics of trained drafters that need no GPU: how far a head's training metric predicts
its acceptance when drafting, and what a training step costs at a real shape.

Dimension legend: N sequences, T positions, J head entries (T - 1), D width, V vocab.

  * `set_agreement` / `step1_agreement` / `drafting_check` (experiments/teacher_forced.py): a
    head's teacher-forced agreement with the target per drafting step on the target's greedy
    answers, and the first draft position's acceptance when it drafts on the same prompts,
    beside step 1 at exactly the positions where those drafts started. In float32 the two are
    equal (drafting reproduces training's step 1); the gap to step 1 at every position is
    selection: drafts start right after a rejection or a fully accepted draft.
  * `step_cost` (experiments/train_flops.py): XLA's cost analysis (FLOPs, bytes) of the compiled
    training step at a real shape, with and without a draft vocabulary (`head.train_vocab`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specjax.decoding.drafter import target_for
from specjax.decoding.sampling import Sampling
from specjax.drafters import heads
from specjax.models.config import KNOWN_SHAPES
from specjax.models.transformer import abstract_decode_params, abstract_model, hidden_width
from specjax.training import data as data_lib
from specjax.training import objectives
from specjax.training.trainer import TrainSettings, make_eval_step, make_train_step


def step1_agreement(drafter, params, data: data_lib.DraftData) -> np.ndarray:
    """bool[N, T]: at position p, whether the head's step-1 token (entry p - 2, true features,
    teacher forced; drawn as drafting draws it, over `params`' draft vocabulary if any) is the
    target's argmax from f_{p-1} (False where p < 2)."""
    greedy = Sampling.create(0.0)
    out = np.zeros(data.tokens.shape, bool)
    for n in range(data.num_sequences):  # a row at a time: [T, V] float32 logits each
        hidden_1xTxD = jnp.asarray(data.hidden[n : n + 1], jnp.float32)
        tokens_1xT = jnp.asarray(data.tokens[n : n + 1])
        (predicted_1xJxD,) = objectives.eagle_passes(
            drafter, params, hidden_1xTxD[:, :-1], tokens_1xT[:, 1:], 1
        )
        config = drafter.target_config
        drafted_J, _ = heads.draft_tokens(
            jax.random.key(0), params["io"], predicted_1xJxD[0], config, greedy
        )
        last_TxD = heads.last_hidden(hidden_1xTxD[0, 1:], config)
        target_J = jnp.argmax(heads.lm_logits(params["io"], last_TxD, config), -1)
        out[n, 2:] = np.asarray(drafted_J == target_J)[:-1]  # entry j predicts position j + 2
    return out


def drafting_check(
    target, drafter, params, data, prompts, eos_ids=(), *, gamma: int, max_new_tokens: int
) -> dict[str, float]:
    """α₁ of the head drafting (greedy, `gamma`) on `prompts`, and step 1 teacher forced at
    the positions where its drafts started, over the rows whose output equals `data`'s
    answers (greedy answers to the same prompts)."""
    import specjax

    out = specjax.generate(
        target, (drafter, params), prompts, gamma=gamma, max_new_tokens=max_new_tokens,
        eos_ids=eos_ids,
    )  # fmt: skip
    agree_NxT = step1_agreement(drafter, params, data)
    accepted, at_starts, rows = [], [], 0
    for n, (generated, drafted) in enumerate(zip(out.token_lists(), out.from_draft, strict=True)):
        g, end = int(data.gen_start[n]), int(data.lengths[n])
        if list(generated) != data.tokens[n, g:end].tolist():
            continue  # a near-tie flipped a token: positions would not line up
        rows += 1
        flags_ = np.asarray(drafted)[: len(generated)]
        # A verification call emits its accepted drafts then one target token (from_draft
        # False; the prefill's token too): the next draft starts right after each of those.
        starts = [i + 1 for i in range(len(generated) - 1) if not flags_[i]]
        accepted += [bool(flags_[s]) for s in starts]
        at_starts += [bool(agree_NxT[n, g + s]) for s in starts]
    return {
        "rows_checked": rows,
        "drafts": len(accepted),
        "alpha_1 drafting": float(np.mean(accepted)) if accepted else float("nan"),
        "step 1 at draft starts": float(np.mean(at_starts)) if at_starts else float("nan"),
    }


def set_agreement(
    target: tuple[Any, Any],
    drafter: Any,
    params: dict[str, Any],
    prompts: Sequence[Sequence[int]],
    eos_ids: Sequence[int] = (),
    *,
    max_new_tokens: int,
    steps: int,
    gamma: int,
) -> dict[str, Any]:
    """Per-step teacher-forced agreement of EAGLE heads (`params`: head and io, as
    `heads.load_heads` returns them) on the target's greedy answers to `prompts`, and, with
    `gamma` > 0, `drafting_check` on the same prompts."""
    model, target_params = target
    # The features the head reads: the target as the loop runs it for this head.
    features = (target_for(drafter, model), target_params)
    data = data_lib.build_data(
        features, prompts, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
        batch_size=len(prompts), progress=False,
    )  # fmt: skip
    loss_fn = objectives.eagle_loss(drafter, data.max_new_tokens, feature_noise=0.0,
                                    unroll_steps=steps)  # fmt: skip
    # Floating leaves to float32 (the eval as training runs it); draft ids stay integers.
    as32 = functools.partial(
        jax.tree.map,
        lambda x: x if x is None or not jnp.issubdtype(x.dtype, jnp.floating)
        else jnp.asarray(x, jnp.float32),
    )  # fmt: skip
    metrics = make_eval_step(loss_fn)(
        as32(params["head"]), {"io": as32(params["io"])}, data.batch(np.arange(data.num_sequences))
    )
    out: dict[str, Any] = {
        "prompts": len(prompts),
        "answer_tokens": int(np.sum(data.lengths - data.gen_start)),
    }
    for k in range(1, steps + 1):
        out[f"step {k}"] = float(metrics["top1" if k == 1 else f"top1_{k}"])
    if gamma:
        out.update(drafting_check(target, drafter, params, data, prompts, eos_ids, gamma=gamma,
                                  max_new_tokens=max_new_tokens))  # fmt: skip
    return out


def step_cost(kind: str, shape: str, batch: int, positions: int, new_tokens: int,
              train_vocab: int, unroll_steps: int, features: str = "stored",
              feature_layers: tuple[int, ...] = ()) -> dict[str, float]:  # fmt: skip
    """XLA's cost analysis of the compiled train step (flops, bytes accessed). `features`:
    "stored" (the batch carries them) or "online" (the step runs the bfloat16 target over
    its batch, `objectives.with_target_features`); `feature_layers`: an EAGLE-3 head's."""
    config = KNOWN_SHAPES[shape]
    model, abstract = abstract_model(config, jnp.float32)
    model = model.with_feature_layers(feature_layers)
    head_config = {"feature_layers": feature_layers} if feature_layers else {}
    drafter, params = heads.init_heads(kind, model, abstract, **head_config)
    io = jax.tree.map(
        lambda x: None if x is None else jax.ShapeDtypeStruct(x.shape, jnp.float32), params["io"]
    )
    if train_vocab:  # the draft vocabulary's head slice: only its shape matters here
        D = config.d_model
        io = {**io, "draft_ids": jax.ShapeDtypeStruct((train_vocab,), jnp.int32),
              "draft_head": jax.ShapeDtypeStruct((D, train_vocab), jnp.float32)}  # fmt: skip
    if kind == "eagle":
        loss_fn = objectives.eagle_loss(drafter, new_tokens, unroll_steps=unroll_steps)
    else:
        loss_fn = objectives.medusa_loss(drafter, new_tokens)
    settings = TrainSettings(num_steps=10, batch_size=batch)
    trainable = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params["head"])
    opt_state = jax.eval_shape(settings.optimizer().init, trainable)
    batch_spec = {
        "tokens": jax.ShapeDtypeStruct((batch, positions), jnp.int32),
        "lengths": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "gen_start": jax.ShapeDtypeStruct((batch,), jnp.int32),
    }
    frozen = {"io": io}
    if features == "online":
        loss_fn = objectives.with_target_features(loss_fn, model)
        frozen["target"] = abstract_decode_params(config, jnp.bfloat16)
    else:
        width = hidden_width(config, feature_layers)
        batch_spec["hidden"] = jax.ShapeDtypeStruct((batch, positions, width), jnp.float32)
    step = make_train_step(loss_fn, settings)
    compiled = step.lower(
        trainable, opt_state, frozen, batch_spec, jax.ShapeDtypeStruct((), jnp.int32)
    ).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"flops": float(cost.get("flops", np.nan)),
            "bytes": float(cost.get("bytes accessed", np.nan))}  # fmt: skip
