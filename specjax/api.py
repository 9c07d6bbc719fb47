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

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from specjax.decoding import rejection, sequence
from specjax.decoding import tree as tree_decoding
from specjax.decoding.drafter import Drafter, decode_layout, target_for
from specjax.decoding.loops import (  # noqa: F401  (TRACE_COUNTS: re-exported for tests)
    TRACE_COUNTS,
    autoregressive_jit,
    speculative_jit,
    tree_jit,
)
from specjax.decoding.sampling import GREEDY, Sampling
from specjax.decoding.state import GenerateOutput
from specjax.decoding.tree import DynamicTreeSpec, TreeSpec
from specjax.drafters.draft_model import DraftModelDrafter
from specjax.models.transformer import Model, Params, Transformer, params_dtype

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


def _is_int(value: Any) -> bool:
    """A Python or numpy integer, not a bool (True is an int to Python, never a count here)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_count(name: str, value: Any, minimum: int = 1) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def prompt_rows(prompt_ids: Any, vocab_size: int) -> list[np.ndarray]:
    """One int64 row per prompt, validated, never coerced: token ids must be integers in
    [0, vocab_size); a flat sequence of ids is ONE prompt, a 2-D array or a list of
    sequences is a batch; text, floats and deeper nesting are refused with a message."""
    if isinstance(prompt_ids, str | bytes):
        raise TypeError(
            f"prompt_ids is a {type(prompt_ids).__name__}, not token ids: encode the text "
            "first (e.g. tokenizer.encode(text))"
        )
    if isinstance(prompt_ids, np.ndarray | jax.Array):
        if prompt_ids.ndim not in (1, 2):
            raise ValueError(
                f"prompt_ids has shape {tuple(prompt_ids.shape)}: expected one prompt [P] or "
                "a batch of prompts [B, P]"
            )
        if prompt_ids.ndim == 2:
            return _array_rows(np.asarray(prompt_ids), vocab_size)
        batch = [prompt_ids]
    elif not isinstance(prompt_ids, Sequence):
        raise TypeError(
            f"prompt_ids must be token ids (a list of ints, a list of such lists, or an "
            f"integer array), got {type(prompt_ids).__name__}"
        )
    elif prompt_ids and all(_is_int(x) for x in prompt_ids):
        batch = [prompt_ids]  # a flat list of ids: one prompt
    else:
        batch = list(prompt_ids)
    if not batch:
        raise ValueError("no prompts given: prompt_ids must hold at least one prompt")
    rows = []
    for b, row in enumerate(batch):
        if isinstance(row, str | bytes):
            raise TypeError(f"prompt {b} is a {type(row).__name__}: encode the text first")
        try:
            array = np.asarray(row)
        except ValueError as error:  # ragged nesting inside one prompt
            raise ValueError(f"prompt {b} is not a flat sequence of token ids ({error})") from None
        if array.ndim != 1:
            raise ValueError(
                f"prompt {b} has shape {array.shape}: each prompt must be a 1-D sequence of "
                "token ids (prompt_ids is one prompt [P] or a batch [B, P], not deeper)"
            )
        if array.size == 0:
            raise ValueError(f"prompt {b} is empty: every prompt needs at least one token")
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(
                f"prompt {b} holds {array.dtype} values, not integer token ids (first: "
                f"{array[0].item()!r}); nothing is rounded for you: convert whole numbers yourself"
            )
        if array.min() < 0 or array.max() >= vocab_size:
            raise ValueError(
                f"prompt {b} has token ids outside [0, {vocab_size}) (min {array.min()}, "
                f"max {array.max()}): wrong tokenizer for this model?"
            )
        rows.append(array.astype(np.int64))
    return rows


def _array_rows(prompts_BxP: np.ndarray, vocab_size: int) -> list[np.ndarray]:
    """`prompt_rows` of a [B, P] array, checked as a whole (the same errors, naming the first
    offending prompt): a Python loop over rows costs seconds at B = 50,000."""
    if prompts_BxP.shape[0] == 0:
        raise ValueError("no prompts given: prompt_ids must hold at least one prompt")
    if prompts_BxP.shape[1] == 0:
        raise ValueError("prompt 0 is empty: every prompt needs at least one token")
    if not np.issubdtype(prompts_BxP.dtype, np.integer):
        raise TypeError(
            f"prompt 0 holds {prompts_BxP.dtype} values, not integer token ids (first: "
            f"{prompts_BxP[0, 0].item()!r}); nothing is rounded for you: convert whole numbers "
            "yourself"
        )
    outside_B = ((prompts_BxP < 0) | (prompts_BxP >= vocab_size)).any(axis=1)
    if outside_B.any():
        b = int(np.argmax(outside_B))
        row = prompts_BxP[b]
        raise ValueError(
            f"prompt {b} has token ids outside [0, {vocab_size}) (min {row.min()}, "
            f"max {row.max()}): wrong tokenizer for this model?"
        )
    return list(prompts_BxP.astype(np.int64))


def pad_prompts(
    prompt_ids: Sequence[Sequence[int]] | np.ndarray,
    vocab_size: int,
    pad_id: int = 0,
    bucket: int = PROMPT_BUCKET,
    max_width: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Ragged prompts -> right-padded int32 [B, P] and lengths [B], validated.

    `pad_id` fills the padding only where it is a token of the vocabulary; otherwise 0 does
    (the padding is masked either way, but its embedding is still computed: an id outside
    the vocabulary reads NaN there, and NaN times a zero attention weight is NaN)."""
    return _pad_rows(prompt_rows(prompt_ids, vocab_size), vocab_size, pad_id, bucket, max_width)


def _pad_rows(
    rows: list[np.ndarray], vocab_size: int, pad_id: int, bucket: int, max_width: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """`pad_prompts` of rows `prompt_rows` has checked."""
    lengths = np.array([row.size for row in rows], np.int32)
    if max_width is not None and lengths.max() > max_width:
        raise ValueError(f"prompt of {lengths.max()} tokens is wider than max_width={max_width}")
    width = int(-(-lengths.max() // bucket) * bucket)
    if max_width is not None:
        width = min(width, max_width)
    fill = pad_id if 0 <= pad_id < vocab_size else 0
    padded = np.full((len(rows), width), fill, np.int32)
    if np.all(lengths == lengths[0]):  # one copy instead of a Python loop over rows
        padded[:, : lengths[0]] = np.stack(rows)
    else:
        for b, row in enumerate(rows):
            padded[b, : row.size] = row
    return padded, lengths


def as_rng(seed: Any) -> jax.Array:
    """A PRNG key from an integer seed (checked: a bare OverflowError helps nobody) or a key."""
    if isinstance(seed, jax.Array | np.ndarray) and not _is_int(seed):
        return seed  # a key (new-style, or a legacy uint32[2]): jax checks it
    if not _is_int(seed):
        raise TypeError(
            f"seed must be an integer or a PRNG key (jax.random.key(n)), got "
            f"{type(seed).__name__} {seed!r}"
        )
    if not -(2**63) <= int(seed) < 2**63:
        raise ValueError(
            f"seed {seed} does not fit a signed 64-bit integer: use a seed in [-2**63, 2**63)"
        )
    return _key(int(seed), jax.config.jax_default_prng_impl)


@functools.lru_cache(maxsize=256)
def _key(seed: int, impl: str) -> jax.Array:
    """`jax.random.key(seed)` under the PRNG implementation `impl`, remembered: making a key
    is a device computation dispatched from Python, and benchmarks call `generate` with the
    same seeds again and again (keys are immutable, so sharing one is safe)."""
    del impl  # part of the cache key only: the key is made with the implementation in effect
    return jax.random.key(seed)


def check_context(
    longest: int, max_new_tokens: int, cache_size: int | None, max_position: int
) -> None:
    """The prompt and its budget must fit the model's context (ModelConfig.max_position)
    before anything runs: past it a model is out of its training range, and a budget of
    1e9 tokens would otherwise end as an XLA out-of-memory error asking for terabytes."""
    if longest > max_position:
        raise ValueError(
            f"prompt of {longest} tokens is longer than the model's context of {max_position} "
            "positions (ModelConfig.max_position): shorten the prompt"
        )
    needed = longest + max_new_tokens
    if cache_size is not None:
        needed = min(needed, cache_size)  # rows stop when the cache is full
    if needed > max_position:
        raise ValueError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = {needed} "
            f"positions exceed the model's context of {max_position} (ModelConfig.max_position)"
            f": use max_new_tokens <= {max_position - longest}, or cache_size <= "
            f"{max_position} to stop rows when the context is full"
        )


def check_cache_memory(
    config: Any, batch: int, cache_size: int, dtype: Any, mesh: jax.sharding.Mesh | None
) -> None:
    """Refuse a KV cache larger than a device's whole memory (when the device reports it)."""
    devices = list(mesh.devices.flat) if mesh is not None else jax.local_devices()[:1]
    try:
        limit = (devices[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001 - a backend without memory statistics: no check
        limit = None
    if not limit:
        return
    per_row_slot = 2 * config.num_layers * config.num_kv_heads * config.head_dim
    needed = per_row_slot * batch * cache_size * np.dtype(dtype).itemsize / len(devices)
    if needed > limit:
        raise ValueError(
            f"the KV cache of {batch} rows x {cache_size} slots needs {needed / 2**30:.1f} GiB "
            f"per device, more than the device's {limit / 2**30:.1f} GiB: lower the batch, "
            "max_new_tokens or cache_size"
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
      max_new_tokens: budget per row (the first token comes from the prefill). The longest
        prompt plus this budget must fit the model's context (`ModelConfig.max_position`),
        unless `cache_size` stops the rows earlier.
      eos_ids: a row stops after emitting any of these.
      seed: an integer in [-2**63, 2**63) or a PRNG key.
      cache_size: KV-cache slots per row; default fits the longest prompt plus the budget.
        A smaller cache stops rows early with stop reason "cache_full".
      pad_id: fills `tokens` after each row's end: any int32 (e.g. -1); the model never
        reads it (an id outside the vocabulary pads the prompt with 0 instead).
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
    max_new_tokens = _check_count("max_new_tokens", max_new_tokens)
    if not isinstance(sampling, Sampling):
        raise TypeError("sampling must be a specjax.Sampling (use Sampling.create(...))")
    if not _is_int(pad_id) or not -(2**31) <= pad_id < 2**31:
        raise ValueError(f"pad_id must be an int32 integer, got {pad_id!r}")
    if cache_size is not None:
        cache_size = _check_count("cache_size", cache_size)
    rng = as_rng(seed)
    speculative_run = drafter is not None
    if speculative_run:
        gamma = _check_count("gamma (draft length)", gamma)
        draft, draft_params = as_drafter(drafter)
        if draft.vocab_size is not None and draft.vocab_size != vocab_size:
            raise ValueError(
                f"draft vocabulary size {draft.vocab_size} differs from the target's "
                f"{vocab_size}: speculative decoding needs one shared vocabulary"
            )
        feature_layers = getattr(draft, "target_feature_layers", ())
        if feature_layers:  # EAGLE-3 heads read these layers' outputs too
            if mesh is not None:
                raise ValueError(
                    f"heads that read the target's layers {feature_layers} (multi-layer "
                    "features) do not support mesh= yet"
                )
            target_model = target_for(draft, target_model)
    if tree is not None:
        tree = tree_decoding.as_tree_spec(tree)
        drafters_tree = tree_decoding.drafters_tree(tree)
        if isinstance(drafters_tree, DynamicTreeSpec) and drafters_tree.top_k > vocab_size:
            raise ValueError(
                f"dynamic tree top_k={drafters_tree.top_k} exceeds the vocabulary {vocab_size}"
            )
        tree_decoding.check_sampling(tree, sampling)
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
                "adaptive_gamma and tree= exclude each other: adaptive_gamma does not apply to "
                "tree= (a tree's depth is fixed); pass one or the other"
            )
        if verify_fn is not rejection.verify_sampling:
            raise ValueError(
                "verify_fn is the acceptance rule of a linear draft; a tree's rule is "
                "tree_verify_fn: drop verify_fn or tree="
            )
        gamma = tree.depth
    slots_per_call = (tree.num_nodes + 1 if tree else gamma + 1) if speculative_run else 1

    if not isinstance(prompt_bucket, int | np.integer) or prompt_bucket < 1:
        raise ValueError(f"prompt_bucket must be an integer >= 1, got {prompt_bucket!r}")
    rows = prompt_rows(prompt_ids, vocab_size)
    longest = max(row.size for row in rows)
    if cache_size is not None and longest >= cache_size:
        raise ValueError(
            f"prompt of {longest} tokens does not fit the KV cache of {cache_size} slots "
            f"(it needs at least {longest + 1}); raise cache_size or shorten the prompt"
        )
    check_context(longest, max_new_tokens, cache_size, target_model.config.max_position)
    prompt, lengths = _pad_rows(rows, vocab_size, pad_id, int(prompt_bucket), cache_size)
    if cache_size is None:
        cache_size = prompt.shape[1] + max_new_tokens + slots_per_call
    check_cache_memory(
        target_model.config, len(lengths), cache_size, params_dtype(target_params), mesh
    )
    eos = np.asarray(list(eos_ids) or [-1], np.int32)
    if eos.max() >= vocab_size:
        raise ValueError(f"eos id {eos.max()} is outside the vocabulary of {vocab_size}")

    if mesh is None:
        # Decode layout: one tree per layer, fused projections (converted once per weights).
        target_params = target_model.decode_params(target_params)
        if speculative_run:  # draft models and EAGLE heads too (`decode_layout`)
            draft_params = decode_layout(draft, draft_params, target_params)
    # Narrower prefills for prompts much shorter than their bucket (`sequence.prefill_widths`),
    # sharded or not: a static argument of every loop (each width is compiled).
    prefill_widths = sequence.prefill_widths(prompt.shape[1], int(prompt_bucket))
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
            prefill_widths=prefill_widths,
            **(
                dict(gamma=gamma, verify_fn=verify_fn, adaptive_gamma=bool(adaptive_gamma))
                if speculative_run
                else {}
            ),
        )
    if tree is not None:
        return tree_jit(
            target_model,
            target_params,
            draft,
            draft_params,
            prompt,
            lengths,
            sampling,
            eos,
            rng,
            tree=tree,
            max_new_tokens=int(max_new_tokens),
            cache_size=int(cache_size),
            pad_id=int(pad_id),
            verify_fn=tree_verify_fn,
            prefill_widths=prefill_widths,
        )
    if not speculative_run:
        return autoregressive_jit(
            target_model,
            target_params,
            prompt,
            lengths,
            sampling,
            eos,
            rng,
            max_new_tokens=int(max_new_tokens),
            cache_size=int(cache_size),
            pad_id=int(pad_id),
            prefill_widths=prefill_widths,
        )
    return speculative_jit(
        target_model,
        target_params,
        draft,
        draft_params,
        prompt,
        lengths,
        sampling,
        eos,
        rng,
        gamma=int(gamma),
        max_new_tokens=int(max_new_tokens),
        cache_size=int(cache_size),
        pad_id=int(pad_id),
        verify_fn=verify_fn,
        adaptive_gamma=bool(adaptive_gamma),
        prefill_widths=prefill_widths,
    )
