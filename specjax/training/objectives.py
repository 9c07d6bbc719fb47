"""Training objectives of the drafters: pure loss functions over (trainable, frozen, batch, rng).

Dimension legend: B batch, T positions, M generated tokens per row (max), H Medusa heads,
V vocab, D target width.

Every objective distils the target: its next-token distribution at position t is
p_t = softmax(lm_head(hidden_t)), computed on the fly from the stored features (see
`data.py`), or from features the step computes itself (`with_target_features`). Losses are
averaged over the generated tokens only: the drafter is scored where it will draft, on the
target's own answers. Logits are computed for those M positions per row and not for the
prompt (the LM head costs 2 V D FLOPs per position, most of the step).

Index bookkeeping: the m-th generated token of a row sits at position g + m (g = gen_start)
and is predicted by
  * a draft model from its own state at position g + m - 1 (DistillSpec);
  * Medusa head i from the target's feature at position g + m - 1 - i;
  * EAGLE from head entry j = g + m - 2, the pair (f_j, t_{j+1}), whose output is the
    predicted feature f̂_{j+1}; that is regressed onto the true f_{j+1} as well.
A prediction is scored when its token exists (g + m < length) and its input does (index >= 0).

Metrics: `top1` is the fraction of scored positions where the drafter's argmax equals the
target's argmax: the greedy acceptance rate of the first draft position, teacher forced.

Draft vocabulary (`io` from `heads.with_draft_vocab`, config `head.train_vocab`): EAGLE and
Medusa are then scored over the Vd tokens most frequent in the training answers only, as
EAGLE-3 trains: teacher and drafter logits are [.., Vd] (`heads.vocab_logits`), the KL is
between the target's distribution restricted to those tokens (renormalised) and the
drafter's, and the LM head costs 2 Vd D FLOPs per position instead of 2 V D. `top1` then
counts a position only when the answer token lies in the draft vocabulary too (a drafter
over Vd tokens cannot propose any other): with greedy answers (data.temperature = 0, the
default) that is exactly the first position's greedy acceptance rate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from specjax.drafters.heads import (
    EagleDrafter,
    MedusaDrafter,
    last_hidden,
    lm_logits,
    target_io,
    vocab_logits,
)
from specjax.models.config import ModelConfig
from specjax.models.transformer import Model
from specjax.training.data import forward_hidden

# (trainable, frozen, batch, rng) -> (loss, metrics)
LossFn = Callable[[Any, Any, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict]]


def gather_positions(x_BxTx: jax.Array, positions_BxM: jax.Array) -> jax.Array:
    """x[b, positions[b, m]] (indices clipped into [0, T); callers mask what was clipped)."""
    T = x_BxTx.shape[1]
    index = jnp.clip(positions_BxM, 0, T - 1)
    index = index.reshape(index.shape + (1,) * (x_BxTx.ndim - 2))
    return jnp.take_along_axis(x_BxTx, index, axis=1)


def with_target_features(loss_fn: LossFn, target: Model) -> LossFn:
    """`loss_fn` on data without stored features (`data.features="online"`): the step runs the
    frozen target over its batch (`frozen["target"]`, decode-layout weights) and hands
    `loss_fn` the hidden states `DraftData.hidden` would have stored, in float32 as
    `DraftData.batch` gives them. No gradient flows into the target."""

    def loss_with_features(trainable, frozen, batch, rng):
        hidden_BxTxD = forward_hidden(target, frozen["target"], batch["tokens"])
        hidden_BxTxD = jax.lax.stop_gradient(hidden_BxTxD).astype(jnp.float32)
        return loss_fn(trainable, frozen, {**batch, "hidden": hidden_BxTxD}, rng)

    return loss_with_features


def generated_positions(batch: dict[str, jax.Array], num_new: int) -> tuple[jax.Array, jax.Array]:
    """Positions g + m of the generated tokens [B, M] and whether each exists [B, M]."""
    positions_BxM = batch["gen_start"][:, None] + jnp.arange(num_new, dtype=jnp.int32)
    return positions_BxM, positions_BxM < batch["lengths"][:, None]


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def kl_and_agreement(
    teacher_logits_xV: jax.Array,
    student_logits_xV: jax.Array,
    answer_in_vocab_x: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """KL(teacher || student) per position, and whether the two argmaxes agree. Over a draft
    vocabulary, agreement also needs the answer token in it (`answer_in_vocab_x`, from
    `answers_in_vocab`; see the module docstring)."""
    teacher_logp = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits_xV), axis=-1)
    student_logp = jax.nn.log_softmax(student_logits_xV, axis=-1)
    kl = jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1)
    agree = jnp.argmax(teacher_logits_xV, -1) == jnp.argmax(student_logits_xV, -1)
    if answer_in_vocab_x is not None:
        agree = agree & answer_in_vocab_x
    return kl, agree


def answers_in_vocab(
    io: dict[str, Any], batch: dict[str, jax.Array], num_new: int, config: ModelConfig
) -> jax.Array | None:
    """Whether each generated token [B, M] (what the teacher's logits at its position predict)
    lies in `io`'s draft vocabulary; None without one. A [V] membership table gathered per
    token (not a [B, M, Vd] comparison)."""
    if io.get("draft_ids") is None:
        return None
    positions_BxM, _ = generated_positions(batch, num_new)
    answers_BxM = gather_positions(batch["tokens"], positions_BxM)
    member_V = jnp.zeros((config.vocab_size,), bool).at[io["draft_ids"]].set(True)
    return member_V[answers_BxM]


def teacher_logits(
    frozen: dict[str, Any], batch: dict[str, jax.Array], config: ModelConfig, num_new: int
) -> tuple[jax.Array, jax.Array]:
    """The target's logits for every generated token [B, M, V] (from the feature one position
    earlier; [B, M, Vd] over a draft vocabulary) and the mask of existing tokens [B, M]."""
    positions_BxM, exists_BxM = generated_positions(batch, num_new)
    hidden_BxMxD = gather_positions(batch["hidden"], positions_BxM - 1)
    return vocab_logits(frozen["io"], hidden_BxMxD, config), exists_BxM & (positions_BxM >= 1)


def medusa_loss(drafter: MedusaDrafter, num_new: int, head_decay: float = 0.8) -> LossFn:
    """Σ_i decay^(i-1) KL(p || q_i), head i scored on the token i + 1 steps after its feature
    (Medusa's per-head weights 0.8^k)."""
    config = drafter.target_config
    H = drafter.num_heads

    def loss_fn(trainable, frozen, batch, rng):
        del rng
        params = {"head": trainable, "io": frozen["io"]}
        teacher_BxMxV, exists_BxM = teacher_logits(frozen, batch, config, num_new)
        positions_BxM, _ = generated_positions(batch, num_new)
        in_vocab_BxM = answers_in_vocab(frozen["io"], batch, num_new, config)
        total, metrics = 0.0, {}
        for i in range(1, H + 1):
            source_BxM = positions_BxM - 1 - i
            hidden_BxMxD = gather_positions(batch["hidden"], source_BxM)
            # Every head runs on the gathered features (D^2 each, cheap); only head i goes
            # through the LM head (2 V D per position: the cost that matters).
            features_BxMxD = drafter.head_features(params, hidden_BxMxD)[:, :, i - 1]
            logits_BxMxV = vocab_logits(frozen["io"], features_BxMxD, config)
            kl_BxM, agree_BxM = kl_and_agreement(teacher_BxMxV, logits_BxMxV, in_vocab_BxM)
            mask_BxM = exists_BxM & (source_BxM >= 0)
            kl = masked_mean(kl_BxM, mask_BxM)
            total = total + head_decay ** (i - 1) * kl
            metrics[f"kl_{i}"] = kl
            metrics[f"top1_{i}"] = masked_mean(agree_BxM, mask_BxM)
        metrics["loss"] = total
        metrics["top1"] = metrics["top1_1"]
        return total, metrics

    return loss_fn


def smooth_l1(x: jax.Array, beta: float = 1.0) -> jax.Array:
    abs_x = jnp.abs(x)
    return jnp.where(abs_x < beta, 0.5 * x * x / beta, abs_x - 0.5 * beta)


def unrolled_step_mask(num_entries: int, step: int, num_passes: int) -> jax.Array:
    """Attention mask [J, num_passes * J] of replayed drafting step `step` (>= 2) over the
    slots of every pass (pass m at slots [(m - 1) J, m J); passes after `step` are hidden).

    When drafting, the step-k entry j (k >= 2) sees the true entries <= j - k + 1 (pass 1,
    what the cache holds after catch-up) and the entries drafted before it in this call, one
    per earlier step: pass m's entry j - k + m for m = 2..k (itself for m = k)."""
    J = num_entries
    j_J1 = jnp.arange(J)[:, None]
    slot_1xS = jnp.arange(num_passes * J)[None, :]
    pass_1xS, index_1xS = slot_1xS // J + 1, slot_1xS % J
    true_prefix = (pass_1xS == 1) & (index_1xS <= j_J1 - step + 1)
    drafted = (pass_1xS >= 2) & (pass_1xS <= step) & (index_1xS == j_J1 - step + pass_1xS)
    return true_prefix | drafted


def eagle_passes(
    drafter: EagleDrafter,
    params: dict[str, Any],
    features_BxJxD: jax.Array,
    next_tokens_BxJ: jax.Array,
    num_steps: int,
) -> list[jax.Array]:
    """Predicted features [B, J, D] of drafting steps 1..num_steps at every entry j, teacher
    forced: entry j of pass 1 reads (f_j, t_{j+1}); of pass k >= 2, the feature pass k - 1
    predicted at entry j - 1 (garbage for j < k - 1), attending as `unrolled_step_mask`.
    `features_BxJxD` are the target's ([B, J, F] for multi-layer features)."""
    B, J, _ = features_BxJxD.shape
    positions_BxJ = jnp.broadcast_to(jnp.arange(J, dtype=jnp.int32), (B, J))
    cache = drafter.init_cache(B, num_steps * J, params["io"]["embedding"].dtype)
    predicted_BxJxD, cache = drafter.apply(
        params, features_BxJxD, next_tokens_BxJ, positions_BxJ, cache, target_features=True
    )
    passes = [predicted_BxJxD]
    for step in range(2, num_steps + 1):
        shifted_BxJxD = jnp.pad(predicted_BxJxD[:, :-1], ((0, 0), (1, 0), (0, 0)))
        mask_BxJxS = jnp.broadcast_to(unrolled_step_mask(J, step, num_steps), (B, J, num_steps * J))
        predicted_BxJxD, cache = drafter.apply(
            params, shifted_BxJxD, next_tokens_BxJ, positions_BxJ, cache, mask_BxJxS
        )
        passes.append(predicted_BxJxD)
    return passes


def eagle_loss(
    drafter: EagleDrafter,
    num_new: int,
    reg_weight: float = 1.0,
    cls_weight: float = 0.1,
    feature_noise: float = 0.1,
    unroll_steps: int = 1,
) -> LossFn:
    """EAGLE: reg_weight * SmoothL1(f̂_{j+1}, f_{j+1}) + cls_weight * KL(p_{j+1} || q_{j+1}),
    teacher forced on true features, with uniform noise U(-a, a) on the input features
    (EAGLE's defaults: weights 1 and 0.1, a = 0.1) to make the head robust to its own
    feature errors when it drafts several tokens.

    unroll_steps > 1 also replays drafting steps 2..unroll_steps in training (a "training-time
    test", as in HASS / EAGLE-3): pass k feeds entry j the feature pass k - 1 predicted at
    entry j - 1, with the attention the drafter has at step k (`unrolled_step_mask`), and is
    scored on the same targets. Step 1 alone (EAGLE-1) never sees its own predicted features,
    which is why its later draft positions are accepted less often. Passes are weighted
    equally; metrics `top1_k` are per pass."""
    config = drafter.target_config

    def loss_fn(trainable, frozen, batch, rng):
        params = {"head": trainable, "io": frozen["io"]}
        tokens_BxT, hidden_BxTxD = batch["tokens"], batch["hidden"]
        # Entries j = 0 .. T - 2: (f_j, t_{j+1}) at position j.
        features_BxJxD = hidden_BxTxD[:, :-1]
        if feature_noise:
            noise = jax.random.uniform(
                rng, features_BxJxD.shape, minval=-feature_noise, maxval=feature_noise
            )
            features_BxJxD = features_BxJxD + noise
        passes = eagle_passes(drafter, params, features_BxJxD, tokens_BxT[:, 1:], unroll_steps)

        positions_BxM, exists_BxM = generated_positions(batch, num_new)
        entries_BxM = positions_BxM - 2
        # The regression target and the teacher: the last hidden state f_{j+1} (the last D of
        # multi-layer features, which the head reads as input only).
        true_BxMxD = gather_positions(last_hidden(hidden_BxTxD, config), entries_BxM + 1)
        teacher_BxMxV = vocab_logits(frozen["io"], true_BxMxD, config)
        in_vocab_BxM = answers_in_vocab(frozen["io"], batch, num_new, config)
        loss, metrics = 0.0, {}
        for step, predicted_BxJxD in enumerate(passes, start=1):
            # Step `step` exists from entry step - 1 on (its chain starts at a true entry).
            mask_BxM = exists_BxM & (entries_BxM >= step - 1)
            predicted_BxMxD = gather_positions(predicted_BxJxD, entries_BxM)
            reg = masked_mean(jnp.mean(smooth_l1(predicted_BxMxD - true_BxMxD), axis=-1), mask_BxM)
            kl_BxM, agree_BxM = kl_and_agreement(
                teacher_BxMxV,
                vocab_logits(frozen["io"], predicted_BxMxD, config),
                in_vocab_BxM,
            )
            kl = masked_mean(kl_BxM, mask_BxM)
            loss = loss + reg_weight * reg + cls_weight * kl
            suffix = "" if step == 1 else f"_{step}"
            metrics[f"reg{suffix}"] = reg
            metrics[f"kl{suffix}"] = kl
            metrics[f"top1{suffix}"] = masked_mean(agree_BxM, mask_BxM)
        metrics["loss"] = loss
        return loss, metrics

    return loss_fn


def distill_loss(draft: Model, target_config: ModelConfig, num_new: int) -> LossFn:
    """DistillSpec: KL(p_target || q_draft) on the target's answers, with the draft reading the
    same tokens (teacher forced). `trainable` and `frozen["draft"]` together are the draft's
    params (pure dicts, merged key by key)."""

    def loss_fn(trainable, frozen, batch, rng):
        del rng
        params = merge_trees(trainable, frozen["draft"])
        tokens_BxT = batch["tokens"]
        B, T = tokens_BxT.shape
        positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        cache = draft.init_cache(B, T, dtype=jax.tree.leaves(params)[0].dtype)
        # Only `hidden` is used: XLA drops the unused full-width logits.
        _, draft_hidden_BxTxD, _ = draft.forward(params, tokens_BxT, positions_BxT, cache)
        teacher_BxMxV, exists_BxM = teacher_logits(frozen, batch, target_config, num_new)
        positions_BxM, _ = generated_positions(batch, num_new)
        hidden_BxMxD = gather_positions(draft_hidden_BxTxD, positions_BxM - 1)
        student_BxMxV = lm_logits(target_io(params), hidden_BxMxD, draft.config)
        kl_BxM, agree_BxM = kl_and_agreement(teacher_BxMxV, student_BxMxV)
        kl = masked_mean(kl_BxM, exists_BxM)
        return kl, {"loss": kl, "top1": masked_mean(agree_BxM, exists_BxM)}

    return loss_fn


def split_trees(tree: dict[str, Any], trainable_keys: tuple[str, ...]) -> tuple[dict, dict]:
    """(trainable, frozen): the top-level entries named in `trainable_keys` and the rest."""
    trainable = {k: v for k, v in tree.items() if k in trainable_keys}
    frozen = {k: v for k, v in tree.items() if k not in trainable_keys}
    return trainable, frozen


def merge_trees(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Union of two dicts with disjoint top-level keys."""
    overlap = set(a) & set(b)
    if overlap:
        raise ValueError(f"trainable and frozen params overlap at {sorted(overlap)}")
    return {**a, **b}
