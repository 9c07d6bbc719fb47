"""Sharded generation: the same decoding loops, compiled for a (data, model) mesh.

Dimension legend: L layers, B batch, P padded prompt width, S cache slots, T new tokens,
V vocab, D width, K draft length, N max_new_tokens, E eos ids.

Nothing in `decoding/` or `models/` knows about meshes. Two small pieces make the single-device
loops run sharded:

  * `ShardedModel` is a `Model` that pins its KV cache (at creation and around every forward)
    and its logits to the layout's shardings. Its weights are in the decode layout laid out
    for the mesh (`layout.shards` column blocks of the fused projections, see
    `models.layers.LayerParams`). The cache rides in the carry of the `lax.while_loop`, so
    pinning it fixes the loop's layout; XLA's sharding propagation then splits every matmul
    like its weights (column-parallel qkv/gate_up, row-parallel o/down) and no weight moves
    inside the loop (tests/parallel inspects the compiled HLO for that).
  * `prepare_generate` compiles the whole generation (prefill + while_loop) with explicit
    in_shardings (weights by `ModelLayout`, prompt rows on `data`, scalars replicated) and
    output shardings (`pin_outputs`: per-row outputs on `data`), one program per (mesh,
    model, static shapes), cached like the unsharded jit.

Rows never interact, so acceptance, rollback and stopping stay local to each data shard. The
communication of one iteration is: the tensor-parallel all-reduces inside the model (two per
layer), the reductions over a vocabulary split on `model` (argmax / softmax of the logits),
and the `all rows done` test of the loop condition (one boolean per data shard).
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from specjax import cache as kv_cache
from specjax.decoding import loops
from specjax.decoding.state import GenerateOutput
from specjax.drafters.draft_model import DraftModelDrafter
from specjax.models.transformer import (
    DecodeParams,
    Model,
    Params,
    converted_once,
    to_decode_params,
)
from specjax.parallel import mesh as mesh_lib
from specjax.parallel.mesh import MODEL, ModelLayout
from specjax.parallel.vocab import VocabParallelFilter


@dataclasses.dataclass(frozen=True)
class ShardedModel(Model):
    """A `Model` whose KV cache and logits are pinned to `layout` inside jit.

    Hashable (a static jit argument); equal layouts share compiled programs.
    """

    layout: ModelLayout | None = None

    __hash__ = Model.__hash__  # its fields, the graphdef's hash remembered (`hash_fields`)

    @staticmethod
    def wrap(model: Model, layout: ModelLayout) -> ShardedModel:
        return ShardedModel(graphdef=model.graphdef, config=model.config, layout=layout)

    @property
    def shards(self) -> int:
        return self.layout.shards

    def _pin_cache(self, cache: kv_cache.KVCache) -> kv_cache.KVCache:
        return jax.lax.with_sharding_constraint(cache, self.layout.cache_shardings())

    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> kv_cache.KVCache:
        return self._pin_cache(super().init_cache(batch_size, max_len, dtype))

    def forward(
        self,
        params: Params,
        tokens_BxT: jax.Array,
        positions_BxT: jax.Array,
        cache: kv_cache.KVCache,
        extra_mask_BxTxT: jax.Array | None = None,
        *,
        logits: bool = True,
    ) -> tuple[jax.Array | None, jax.Array, kv_cache.KVCache]:
        logits_BxTxV, hidden_BxTxD, cache = super().forward(
            params, tokens_BxT, positions_BxT, self._pin_cache(cache), extra_mask_BxTxT,
            logits=logits,
        )  # fmt: skip
        if logits:
            logits_BxTxV = self._pin_logits(logits_BxTxV)
        hidden_BxTxD = jax.lax.with_sharding_constraint(hidden_BxTxD, self.layout.hidden_sharding())
        return logits_BxTxV, hidden_BxTxD, self._pin_cache(cache)

    def logits(self, params: Params, hidden_BxTxD: jax.Array) -> jax.Array:
        return self._pin_logits(super().logits(params, hidden_BxTxD))

    def _pin_logits(self, logits_BxTxV: jax.Array) -> jax.Array:
        return jax.lax.with_sharding_constraint(logits_BxTxV, self.layout.logits_sharding())


def unwrap(model: Model) -> Model:
    """The plain Model (drops a layout)."""
    return Model(graphdef=model.graphdef, config=model.config)


def shard_model(
    model: Model, params: Params, mesh: Mesh, *, tensor_parallel: bool = True
) -> tuple[ShardedModel, DecodeParams]:
    """(ShardedModel, its decode-layout params placed on their shardings) for `mesh`.

    Raises MeshError when the model's heads or MLP width do not split over `model`.
    """
    layout = ModelLayout(mesh, model.config, tensor_parallel=tensor_parallel)
    return ShardedModel.wrap(unwrap(model), layout), place_params(params, layout)


def _decode_layout_on_host(params: Params, layout: ModelLayout) -> DecodeParams:
    """Storage-layout params -> the decode layout for `layout.shards`, built on the host CPU
    (weights sharded over several devices or hosts never gather on one accelerator), once per
    original weights (`converted_once`)."""
    if isinstance(params, DecodeParams):
        return to_decode_params(layout.config, params, layout.shards)

    def convert(storage: Params) -> DecodeParams:
        host = jax.tree.map(
            np.asarray, nnx.to_pure_dict(storage) if isinstance(storage, nnx.State) else storage
        )
        with jax.default_device(jax.local_devices(backend="cpu")[0]):
            return to_decode_params(layout.config, host, layout.shards)

    return converted_once(("host-decode", layout.config, layout.shards), params, convert)


def spans_processes(mesh: Mesh | None) -> bool:
    """Does the mesh hold devices of more than one process (a multi-host job)?"""
    if mesh is None:
        return False
    return len({device.process_index for device in mesh.devices.flat}) > 1


def put(tree: Any, shardings: Any) -> Any:
    """`jax.device_put(tree, shardings)` that also works when the mesh spans processes.

    `shardings` is one Sharding or a pytree of them matching `tree`. Across processes a plain
    device_put of process-local arrays is refused; every process then builds the global array
    from its own (identical) copy with `make_array_from_callback`, filling only its shards.
    Arrays already on their sharding are not copied.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    leaves, treedef = jax.tree.flatten(tree)
    targets = treedef.flatten_up_to(shardings)
    if not any(spans_processes(getattr(s, "mesh", None)) for s in targets):
        return jax.device_put(tree, shardings)
    return treedef.unflatten([_put_global(x, s) for x, s in zip(leaves, targets)])


def _put_global(value: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(value, jax.Array) and value.sharding == sharding:
        return value
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        data = _put_global(jax.random.key_data(value), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


# Weights placed on a mesh, per original leaf (by id, guarded by a weak reference) and target
# sharding: repeated `specjax.generate(..., mesh=)` calls with single-device weights reshard
# them once, not on every call (which would put a full weight copy inside every timing).
_PLACED: dict[int, tuple[weakref.ref, dict[Any, jax.Array]]] = {}


def _placed_leaf(leaf: Any, sharding: NamedSharding) -> Any:
    if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
        return leaf
    key = id(leaf)
    entry = _PLACED.get(key)
    if entry is None or entry[0]() is not leaf:
        try:  # the entry dies with the original array
            ref = weakref.ref(leaf, lambda _, key=key: _PLACED.pop(key, None))
        except TypeError:  # no weak references (Python scalars): place every time
            return put(leaf, sharding)
        entry = _PLACED[key] = (ref, {})
    if sharding not in entry[1]:
        entry[1][sharding] = put(leaf, sharding)
    return entry[1][sharding]


def place_params(params: Any, layout: ModelLayout | None, mesh: Mesh | None = None) -> Any:
    """Params on their shardings: a model's weights (`layout` given) in the decode layout for
    that layout; anything else (`layout` None, e.g. draft heads) replicated over `mesh`.

    Arrays already there are used as they are. Others are copied once and the copy is reused
    while the original lives (see `_PLACED`); to hold only the sharded copy, place the
    weights yourself (`shard_model`) and drop the originals.
    """
    if params is None:
        return None
    if layout is None:
        shardings = jax.tree.map(lambda _: mesh_lib.replicated(mesh), params)
    else:
        params = _decode_layout_on_host(params, layout)
        shardings = layout.param_shardings(params)
    leaves, treedef = jax.tree.flatten(params)
    return treedef.unflatten(
        [_placed_leaf(x, s) for x, s in zip(leaves, treedef.flatten_up_to(shardings))]
    )


def shard_drafter(
    drafter: Any, drafter_params: Any, mesh: Mesh, *, tensor_parallel: bool
) -> tuple[Any, Any, Any]:
    """(drafter, placed params, params shardings) for `mesh`.

    A draft model is pinned like the target: its batch on `data`; its weights split over
    `model` when `tensor_parallel`, else replicated. Other drafters (n-gram, ...) are used as
    they are; their params, if any, are replicated.
    """
    if isinstance(drafter, DraftModelDrafter):
        layout = ModelLayout(mesh, drafter.model.config, tensor_parallel=tensor_parallel)
        wrapped = DraftModelDrafter(ShardedModel.wrap(unwrap(drafter.model), layout))
        placed = place_params(drafter_params, layout)
        return wrapped, placed, layout.param_shardings(placed)
    if drafter_params is None:
        return drafter, None, None
    return drafter, place_params(drafter_params, None, mesh), mesh_lib.replicated(mesh)


def pin_outputs(out: Any, mesh: Mesh, batch_size: int, *, replicate: bool) -> Any:
    """Every per-row output ([B, ...]) on `data`, everything else replicated; or everything
    replicated (when the mesh spans processes, so that every process can read the tokens).

    Applied inside the jitted function, which is what jit's out_shardings does, but decided per
    leaf from its shape at trace time: fields added to GenerateOutput need no change here.
    """
    rows = NamedSharding(mesh, P(mesh_lib.DATA))
    rep = mesh_lib.replicated(mesh)

    def pin(x: jax.Array) -> jax.Array:
        per_row = not replicate and x.ndim >= 1 and x.shape[0] == batch_size
        return jax.lax.with_sharding_constraint(x, rows if per_row else rep)

    return jax.tree.map(pin, out)


class _TreeKey:
    """A hashable stand-in for a pytree of shardings (cache key of the compiled programs)."""

    def __init__(self, tree: Any):
        leaves, self.treedef = jax.tree.flatten(tree)
        self.leaves = tuple(leaves)

    @property
    def tree(self) -> Any:
        return jax.tree.unflatten(self.treedef, self.leaves)

    def __hash__(self) -> int:
        return hash((self.treedef, self.leaves))

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, _TreeKey)
            and self.treedef == other.treedef
            and self.leaves == other.leaves
        )


@functools.lru_cache(maxsize=64)
def _compiled(
    kind: str,
    target: ShardedModel,
    drafter: Any,
    params_key: _TreeKey,
    drafter_params_key: _TreeKey | None,
    replicate_outputs: bool,
    static: tuple[tuple[str, Any], ...],
) -> Callable:
    """The jitted generation for one static key (built once, like the unsharded jit)."""
    mesh = target.layout.mesh
    rep = mesh_lib.replicated(mesh)
    # Dynamic arguments: [params, (drafter_params,)] prompt [B,P], lengths [B], sampling,
    # eos_ids [E], rng.
    rows = (mesh_lib.batch_sharding(mesh, 2), mesh_lib.batch_sharding(mesh, 1), rep, rep, rep)
    if kind == "autoregressive":
        body = functools.partial(loops._autoregressive, target, **dict(static))

        def fn(params, prompt, lengths, sampling, eos_ids, rng):
            out = body(params, prompt, lengths, sampling, eos_ids, rng)
            return pin_outputs(out, mesh, prompt.shape[0], replicate=replicate_outputs)

        in_shardings = (params_key.tree, *rows)
        lengths_argnum = 2
    else:
        body = functools.partial(loops._speculative, **dict(static))

        def fn(params, drafter_params, prompt, lengths, sampling, eos_ids, rng):
            out = body(
                target, params, drafter, drafter_params, prompt, lengths, sampling, eos_ids, rng
            )
            return pin_outputs(out, mesh, prompt.shape[0], replicate=replicate_outputs)

        drafter_shardings = None if drafter_params_key is None else drafter_params_key.tree
        in_shardings = (params_key.tree, drafter_shardings, *rows)
        lengths_argnum = 3
    return jax.jit(
        fn,
        in_shardings=in_shardings,
        # Output shardings: `pin_outputs`, inside fn.
        # Consumed inputs: the prompt lengths' buffer becomes num_generated (same shape and
        # sharding). The big buffers, the KV caches, live and die inside the program: XLA
        # updates the while-loop carry in place, so there is nothing larger to donate.
        donate_argnums=() if replicate_outputs else (lengths_argnum,),
    )


def prepare_generate(
    mesh: Mesh,
    target: Model,
    params: Params,
    drafter: Any,
    drafter_params: Any,
    prompt_BxP: np.ndarray,
    lengths_B: np.ndarray,
    sampling: Any,
    eos_ids_E: np.ndarray,
    rng: jax.Array,
    *,
    shard_drafter_weights: bool = False,
    vocab_parallel: bool = True,
    **static: Any,
) -> tuple[Callable, tuple[Any, ...]]:
    """(compiled function, its arguments placed on the mesh) for one generation.

    `static` are the keyword arguments of `loops._autoregressive` / `loops._speculative`
    (max_new_tokens, cache_size, pad_id, optionally prefill_widths (`sequence.prefill`; left
    out: one pass over the padded width), and for speculative runs gamma and verify_fn). They
    key the compiled program: each distinct value compiles once.
    `vocab_parallel=False` leaves top-k/top-p on a split vocabulary to GSPMD (an all-gather of
    the logits every step): the baseline `experiments.bench_parallel --sections=vocab` times
    the vocab-parallel filter against. Same tokens either way.
    Tests call `fn.lower(*args).compile().as_text()` on the result to inspect the program.
    """
    mesh_lib.check_batch(mesh, prompt_BxP.shape[0])
    sharded_target, placed_params = shard_model(unwrap(target), params, mesh)
    if vocab_parallel and sampling.filtered and sharded_target.layout.vocab_sharded:
        # Top-k/top-p on logits split over `model`: without this GSPMD all-gathers [B, T, V].
        sampling = dataclasses.replace(sampling, vocab_filter=VocabParallelFilter(mesh, MODEL))
    params_key = _TreeKey(sharded_target.layout.param_shardings(placed_params))
    # Outputs stay split by rows unless another process holds some of them.
    replicate_outputs = spans_processes(mesh)
    rep = mesh_lib.replicated(mesh)
    row_args = (
        put(np.asarray(prompt_BxP, np.int32), mesh_lib.batch_sharding(mesh, 2)),
        put(np.asarray(lengths_B, np.int32), mesh_lib.batch_sharding(mesh, 1)),
        put(sampling, rep),
        put(np.asarray(eos_ids_E, np.int32), rep),
        put(rng, rep),
    )
    static_key = tuple(sorted(static.items()))
    if drafter is None:
        fn = _compiled(
            "autoregressive", sharded_target, None, params_key, None, replicate_outputs, static_key
        )
        return fn, (placed_params, *row_args)
    sharded_draft, placed_draft_params, draft_shardings = shard_drafter(
        drafter, drafter_params, mesh, tensor_parallel=shard_drafter_weights
    )
    draft_key = None if draft_shardings is None else _TreeKey(draft_shardings)
    fn = _compiled(
        "speculative",
        sharded_target,
        sharded_draft,
        params_key,
        draft_key,
        replicate_outputs,
        static_key,
    )
    return fn, (placed_params, placed_draft_params, *row_args)


def generate(*args: Any, **kwargs: Any) -> GenerateOutput:
    """Runs `prepare_generate`'s program (see there for the arguments)."""
    fn, fn_args = prepare_generate(*args, **kwargs)
    return fn(*fn_args)


def forward_step(
    model: ShardedModel,
    params_shardings: Any,
    *,
    donate_cache: bool = True,
    keep_lengths: bool = False,
) -> Callable:
    """A jitted single forward call on the mesh: (params, tokens [B,T], positions [B,T],
    cache) -> (logits [B,T,V], cache).

    The cache is donated: consumed, its buffers reused for the updated cache, so a step needs
    no second copy of it. `keep_lengths` returns the cache with its input lengths (the new
    entries rolled back): a benchmark can then repeat the same step forever.

    This is the unit the benchmarks time (one target call at T = 1, gamma + 1, ...).
    """
    mesh = model.layout.mesh
    rows2 = mesh_lib.batch_sharding(mesh, 2)
    cache_shardings = model.layout.cache_shardings()

    def step(params, tokens_BxT, positions_BxT, cache):
        logits_BxTxV, _, new_cache = model.forward(params, tokens_BxT, positions_BxT, cache)
        if keep_lengths:
            new_cache = kv_cache.rollback(new_cache, cache.lengths)
        return logits_BxTxV, new_cache

    return jax.jit(
        step,
        in_shardings=(params_shardings, rows2, rows2, cache_shardings),
        out_shardings=(model.layout.logits_sharding(), cache_shardings),
        donate_argnums=(3,) if donate_cache else (),
    )
