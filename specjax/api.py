"""The researcher-facing entry point: `specjax.generate`.

    out = specjax.generate(target, drafter, prompt_ids, sampling=Sampling.create(0.7),
                           gamma=4, max_new_tokens=128)
    out.token_lists(), out.tau, out.acceptance_per_position

Inputs are validated here, on the host, so bad input fails with a message naming the problem
instead of a trace from inside XLA. Everything after validation is one jitted program per
static shape (batch, padded prompt width, cache size, gamma, max_new_tokens, greedy or not):
a new prompt of the same padded shape, a new temperature or a new seed reuses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specjax.decoding import autoregressive, rejection, speculative
from specjax.decoding import tree as tree_decoding
from specjax.decoding.sampling import GREEDY, Sampling
from specjax.decoding.state import GenerateOutput
from specjax.decoding.tree import DynamicTreeSpec, TreeSpec
from specjax.drafters.base import Drafter
from specjax.drafters.draft_model import DraftModelDrafter
from specjax.models.transformer import Model, Params, Transformer

# How many times each decoder was traced (compiled); tests read it to prove reuse.
TRACE_COUNTS = {"autoregressive": 0, "speculative": 0, "tree": 0}

PROMPT_BUCKET = 16  # prompts are right-padded to a multiple of this, to share compilations


def as_model(model: Any) -> tuple[Model, Params]:
    """Accepts a Transformer module or a (Model, params) pair."""
    if isinstance(model, Transformer):
        return Model.split(model)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], Model):
        return model
    raise TypeError(
        f"expected a specjax Transformer or a (Model, params) pair, got {type(model).__name__}"
    )


def as_drafter(drafter: Any) -> tuple[Drafter, Any]:
    """Accepts a draft Transformer, a (Model, params) pair, a (Drafter, params) pair, or a
    parameter-free Drafter."""
    if isinstance(drafter, Transformer) or (
        isinstance(drafter, tuple) and len(drafter) == 2 and isinstance(drafter[0], Model)
    ):
        model, params = as_model(drafter)
        return DraftModelDrafter(model), params
    if isinstance(drafter, tuple) and len(drafter) == 2 and isinstance(drafter[0], Drafter):
        return drafter
    if isinstance(drafter, Drafter):
        return drafter, None
    raise TypeError(
        f"cannot use {type(drafter).__name__} as a drafter: expected a draft Transformer, a "
        "(Model, params) pair, or a specjax.Drafter (subclass it: it declares the optional "
        "capabilities with their defaults)"
    )


def pad_prompts(
    prompt_ids: Sequence[Sequence[int]] | np.ndarray,
    vocab_size: int,
    pad_id: int = 0,
    bucket: int = PROMPT_BUCKET,
    max_width: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Ragged prompts -> right-padded int32 [B, P] and lengths [B], validated."""
    if isinstance(prompt_ids, np.ndarray | jax.Array) and np.ndim(prompt_ids) == 1:
        prompt_ids = [prompt_ids]
    rows = [np.asarray(row, dtype=np.int64).reshape(-1) for row in prompt_ids]
    if not rows:
        raise ValueError("no prompts given: prompt_ids must hold at least one prompt")
    for b, row in enumerate(rows):
        if row.size == 0:
            raise ValueError(f"prompt {b} is empty: every prompt needs at least one token")
        if row.min() < 0 or row.max() >= vocab_size:
            raise ValueError(
                f"prompt {b} has token ids outside [0, {vocab_size}) (min {row.min()}, "
                f"max {row.max()}): wrong tokenizer for this model?"
            )
    lengths = np.array([row.size for row in rows], np.int32)
    width = int(-(-lengths.max() // bucket) * bucket)
    if max_width is not None:
        width = min(width, max_width)
    padded = np.full((len(rows), width), pad_id, np.int32)
    for b, row in enumerate(rows):
        padded[b, : row.size] = row
    return padded, lengths


def _autoregressive(
    target, params, prompt, lengths, sampling, eos_ids, rng, *, max_new_tokens, cache_size, pad_id
):
    TRACE_COUNTS["autoregressive"] += 1
    return autoregressive.generate(
        target,
        params,
        prompt,
        lengths,
        sampling,
        eos_ids,
        rng,
        max_new_tokens=max_new_tokens,
        cache_size=cache_size,
        pad_id=pad_id,
    )


def _speculative(
    target,
    params,
    drafter,
    drafter_params,
    prompt,
    lengths,
    sampling,
    eos_ids,
    rng,
    *,
    gamma,
    max_new_tokens,
    cache_size,
    pad_id,
    verify_fn,
    adaptive_gamma=False,
):
    TRACE_COUNTS["speculative"] += 1
    return speculative.generate(
        target,
        params,
        drafter,
        drafter_params,
        prompt,
        lengths,
        sampling,
        eos_ids,
        rng,
        gamma=gamma,
        max_new_tokens=max_new_tokens,
        cache_size=cache_size,
        pad_id=pad_id,
        verify_fn=verify_fn,
        adaptive_gamma=adaptive_gamma,
    )


# The plain bodies above are also compiled by `specjax.parallel.sharded` with mesh shardings.
_autoregressive_jit = jax.jit(
    _autoregressive, static_argnames=("target", "max_new_tokens", "cache_size", "pad_id")
)
_speculative_jit = jax.jit(
    _speculative,
    static_argnames=(
        "target",
        "drafter",
        "gamma",
        "max_new_tokens",
        "cache_size",
        "pad_id",
        "verify_fn",
        "adaptive_gamma",
    ),
)


def _tree(
    target, params, drafter, drafter_params, prompt, lengths, sampling, eos_ids, rng, **static
):
    TRACE_COUNTS["tree"] += 1
    return tree_decoding.generate(
        target, params, drafter, drafter_params, prompt, lengths, sampling, eos_ids, rng, **static
    )


_tree_jit = jax.jit(
    _tree,
    static_argnames=(
        "target",
        "drafter",
        "tree",
        "max_new_tokens",
        "cache_size",
        "pad_id",
        "verify_fn",
    ),
)


def generate(
    target: Any,
    drafter: Any,
    prompt_ids: Sequence[Sequence[int]] | np.ndarray,
    *,
    sampling: Sampling = GREEDY,
    gamma: int = 4,
    max_new_tokens: int = 64,
    eos_ids: Sequence[int] = (),
    seed: int | jax.Array = 0,
    cache_size: int | None = None,
    pad_id: int = 0,
    verify_fn=rejection.verify_sampling,
    mesh: jax.sharding.Mesh | None = None,
    shard_drafter: bool = False,
    tree: TreeSpec | DynamicTreeSpec | Sequence[int] | str | None = None,
    tree_verify_fn=rejection.verify_tree_sampling,
    adaptive_gamma: bool = False,
    prompt_bucket: int = PROMPT_BUCKET,
) -> GenerateOutput:
    """Generates continuations of `prompt_ids`, speculatively when a drafter is given.

    Args:
      target: Transformer module or (Model, params).
      drafter: None (autoregressive), a draft Transformer / (Model, params), a
        (Drafter, params) pair, or a parameter-free Drafter.
      prompt_ids: one prompt (1-D ids) or a list of prompts of any lengths (batched).
      sampling: `Sampling.create(temperature, top_k, top_p)`; default greedy.
      gamma: draft tokens per target call (K).
      max_new_tokens: budget per row (the first token comes from the prefill).
      eos_ids: a row stops after emitting any of these.
      seed: int or PRNG key.
      cache_size: KV-cache slots per row; default fits the longest prompt plus the budget.
        A smaller cache stops rows early with stop reason "cache_full".
      pad_id: fills `tokens` after each row's end.
      verify_fn: the sampling acceptance rule (research hook; default lossless).
      mesh: a (data, model) mesh from `specjax.parallel.make_mesh`: rows are split over
        `data` (the batch must divide), the target's weights and KV cache over `model`.
        None: the single-device program, unchanged.
      shard_drafter: with a mesh, also split a draft model's weights over `model`
        (default: replicated on every device; its batch is split over `data` either way).
      adaptive_gamma: `gamma` becomes the largest draft length; each row starts at 1, grows
        by 2 after a full acceptance and shrinks by 1 otherwise (no recompilation; lossless).
      tree: token-tree drafting (`gamma` is then the tree's depth), with any drafter that
        drafts trees (`supports_trees`: a draft model, early exit, EAGLE heads). A static
        tree, e.g. (3, 2, 1): three first tokens, two continuations each, then one (greedy:
        the drafter's most likely ones; sampling: drawn from the drafter); or
        `DynamicTreeSpec(depth, top_k, num_nodes)`, an EAGLE-2 tree shaped each call by the
        draft's confidence; or a string "3,2,1" / "dynamic:depth=4,top_k=4,nodes=16".
        Sampled trees are verified by the lossless multi-draft rule `tree_verify_fn`.
      tree_verify_fn: the sampling acceptance rule for trees (research hook; default
        `rejection.verify_tree_sampling`, lossless).
      prompt_bucket: the padded prompt width is the longest prompt rounded up to a multiple
        of this; one compiled program serves every width of a bucket (benchmarks over many
        prompts pass e.g. 512 so that all of them share one compilation).

    Returns:
      GenerateOutput (tokens [B, max_new_tokens], num_generated, stop_reason, stats).
    """
    target_model, target_params = as_model(target)
    vocab_size = target_model.config.vocab_size
    if not isinstance(max_new_tokens, int | np.integer) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(sampling, Sampling):
        raise TypeError("sampling must be a specjax.Sampling (use Sampling.create(...))")
    speculative_run = drafter is not None
    if speculative_run:
        if not isinstance(gamma, int | np.integer) or gamma < 1:
            raise ValueError(f"gamma (draft length) must be an integer >= 1, got {gamma!r}")
        draft, draft_params = as_drafter(drafter)
        if draft.vocab_size is not None and draft.vocab_size != vocab_size:
            raise ValueError(
                f"draft vocabulary size {draft.vocab_size} differs from the target's "
                f"{vocab_size}: speculative decoding needs one shared vocabulary"
            )
    if tree is not None:
        tree = tree_decoding.as_tree_spec(tree)
        if isinstance(tree, DynamicTreeSpec) and tree.top_k > vocab_size:
            raise ValueError(f"dynamic tree top_k={tree.top_k} exceeds the vocabulary {vocab_size}")
        if not speculative_run:
            raise ValueError("tree= needs a drafter (a draft model, early exit or EAGLE heads)")
        if not draft.supports_trees:
            raise ValueError(
                f"tree= needs a drafter that drafts token trees (a draft model, early exit or "
                f"EAGLE heads); {type(draft).__name__} does not"
            )
        if mesh is not None:
            raise ValueError("tree= does not support mesh= yet")
        if adaptive_gamma:
            raise ValueError(
                "adaptive_gamma and tree= exclude each other (a tree's depth is fixed)"
            )
        if verify_fn is not rejection.verify_sampling:
            raise ValueError(
                "verify_fn is the linear acceptance rule; a tree's rule is tree_verify_fn"
            )
        gamma = tree.depth
    slots_per_call = (tree.num_nodes + 1 if tree else gamma + 1) if speculative_run else 1

    if not isinstance(prompt_bucket, int | np.integer) or prompt_bucket < 1:
        raise ValueError(f"prompt_bucket must be an integer >= 1, got {prompt_bucket!r}")
    prompt, lengths = pad_prompts(
        prompt_ids, vocab_size, pad_id, bucket=int(prompt_bucket), max_width=cache_size
    )
    longest = int(lengths.max())
    if cache_size is None:
        cache_size = prompt.shape[1] + max_new_tokens + slots_per_call
    if longest >= cache_size:
        raise ValueError(
            f"prompt of {longest} tokens does not fit the KV cache of {cache_size} slots "
            f"(it needs at least {longest + 1}); raise cache_size or shorten the prompt"
        )
    eos = np.asarray(list(eos_ids) or [-1], np.int32)
    if eos.max() >= vocab_size:
        raise ValueError(f"eos id {eos.max()} is outside the vocabulary of {vocab_size}")
    rng = jax.random.key(seed) if isinstance(seed, int | np.integer) else seed

    if mesh is None:
        # Decode layout: one tree per layer, fused projections (converted once per weights).
        target_params = target_model.decode_params(target_params)
        if speculative_run and isinstance(draft, DraftModelDrafter):
            draft_params = draft.model.decode_params(draft_params)
    if mesh is not None:
        from specjax.parallel import sharded  # late: only sharded runs need it

        return sharded.generate(
            mesh,
            target_model,
            target_params,
            draft if speculative_run else None,
            draft_params if speculative_run else None,
            prompt,
            lengths,
            sampling,
            eos,
            rng,
            shard_drafter_weights=shard_drafter,
            max_new_tokens=int(max_new_tokens),
            cache_size=int(cache_size),
            pad_id=int(pad_id),
            **(dict(gamma=int(gamma), verify_fn=verify_fn) if speculative_run else {}),
        )
    if tree is not None:
        return _tree_jit(
            target_model,
            target_params,
            draft,
            draft_params,
            jnp.asarray(prompt),
            jnp.asarray(lengths),
            sampling,
            jnp.asarray(eos),
            rng,
            tree=tree,
            max_new_tokens=int(max_new_tokens),
            cache_size=int(cache_size),
            pad_id=int(pad_id),
            verify_fn=tree_verify_fn,
        )
    if not speculative_run:
        return _autoregressive_jit(
            target_model,
            target_params,
            jnp.asarray(prompt),
            jnp.asarray(lengths),
            sampling,
            jnp.asarray(eos),
            rng,
            max_new_tokens=int(max_new_tokens),
            cache_size=int(cache_size),
            pad_id=int(pad_id),
        )
    return _speculative_jit(
        target_model,
        target_params,
        draft,
        draft_params,
        jnp.asarray(prompt),
        jnp.asarray(lengths),
        sampling,
        jnp.asarray(eos),
        rng,
        gamma=int(gamma),
        max_new_tokens=int(max_new_tokens),
        cache_size=int(cache_size),
        pad_id=int(pad_id),
        verify_fn=verify_fn,
        adaptive_gamma=bool(adaptive_gamma),
    )
