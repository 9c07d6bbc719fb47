"""Fixed-size key/value cache: a pytree and pure functions over it.

Dimension legend: L layers, B batch, S cache slots (max_len), C cached kv heads, Dh head dim,
T tokens written by one forward call, M slots moved at once.

Slot s of row b holds the key/value of that row's token at position s. Only slots
`s < lengths[b]` are valid; everything at or beyond `lengths[b]` is garbage that the next
write overwrites. Hence rollback (rejecting draft tokens) is a length reset, never a copy or a
zeroing, and rows may hold different numbers of tokens.

Each layer's keys and values are arrays of their own (a tuple over layers), not slices of one
[L, ...] array: inside the compiled generation loop a layer then writes its new entries into
its own buffer in place, and attention reads it where it lies.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specjax.models.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer.

    Fields:
      k: tuple of L arrays [B, S, C, Dh], keys (RoPE already applied).
      v: tuple of L arrays [B, S, C, Dh], values.
      lengths: int32[B], number of valid slots per row.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    lengths: jax.Array

    @property
    def max_len(self) -> int:
        return self.k[0].shape[1]

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.k)


def init_cache(
    config: ModelConfig,
    batch_size: int,
    max_len: int,
    dtype=jnp.float32,
    kv_heads: int | None = None,
) -> KVCache:
    """An empty cache of `max_len` slots per row; `kv_heads` (default the model's G) is C."""
    if max_len < 1:
        raise ValueError(f"cache max_len must be >= 1, got {max_len}")
    shape = (batch_size, max_len, kv_heads or config.num_kv_heads, config.head_dim)
    return KVCache(
        k=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
        v=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
        lengths=jnp.zeros((batch_size,), jnp.int32),
    )


def write_layer(
    cache_BxSxCxDh: jax.Array, new_BxTxCxDh: jax.Array, start_B: jax.Array
) -> jax.Array:
    """Writes T new entries of one layer at per-row offsets `start_B` (vmapped DUS).

    The caller guarantees start_B + T <= S: `lax.dynamic_update_slice` clamps out-of-range
    starts, which would silently overwrite valid slots.
    """

    def write_row(cache_SxCxDh, new_TxCxDh, start):
        return jax.lax.dynamic_update_slice(
            cache_SxCxDh, new_TxCxDh.astype(cache_SxCxDh.dtype), (start, 0, 0)
        )

    return jax.vmap(write_row)(cache_BxSxCxDh, new_BxTxCxDh, start_B)


def move_slots(cache: KVCache, start_B: jax.Array, source_BxM: jax.Array) -> KVCache:
    """Copies slots start + source[m] to start + m, m < M, in every layer (per row).

    Tree decoding uses it to make an accepted root-to-leaf path contiguous. Sources are read
    before anything is written, so overlapping moves are safe.
    """

    def move_row(layer_SxCxDh, start, source_M):
        moved_MxCxDh = jnp.take(layer_SxCxDh, start + source_M, axis=0)
        return jax.lax.dynamic_update_slice(layer_SxCxDh, moved_MxCxDh, (start, 0, 0))

    def move(layer_BxSxCxDh):
        return jax.vmap(move_row)(layer_BxSxCxDh, start_B, source_BxM)

    return dataclasses.replace(cache, k=tuple(map(move, cache.k)), v=tuple(map(move, cache.v)))


def rollback(cache: KVCache, lengths: jax.Array) -> KVCache:
    """Keeps the first `lengths[b]` slots of each row: a length reset, nothing is copied."""
    return dataclasses.replace(cache, lengths=lengths.astype(jnp.int32))


def attention_mask(
    lengths_B: jax.Array,
    query_positions_BxT: jax.Array,
    max_len: int,
    window: jax.Array | int = 0,
    extra_mask_BxTxT: jax.Array | None = None,
) -> jax.Array:
    """Boolean mask [B, T, S]: may query t of row b attend to cache slot s?

    The T new tokens occupy slots [lengths[b], lengths[b] + T). A query sees
      * every valid old slot (s < lengths[b]), and
      * new slots j = s - lengths[b] with j <= t (causal), or, when `extra_mask_BxTxT` is
        given, those with extra_mask[b, t, j] (tree attention: a node sees its ancestors).
    With a sliding window W > 0 it additionally sees only keys whose position p_k satisfies
    p_q - p_k < W. Old slot s holds position s; new slot j holds query_positions[b, j].
    """
    T = query_positions_BxT.shape[1]
    slots_S = jnp.arange(max_len, dtype=jnp.int32)
    new_index_BxS = slots_S[None, :] - lengths_B[:, None]  # index j among the new tokens
    is_old_BxS = new_index_BxS < 0
    is_new_BxS = (new_index_BxS >= 0) & (new_index_BxS < T)
    new_index_clipped_BxS = jnp.clip(new_index_BxS, 0, T - 1)

    if extra_mask_BxTxT is None:
        t_T = jnp.arange(T, dtype=jnp.int32)
        new_visible_BxTxS = new_index_clipped_BxS[:, None, :] <= t_T[None, :, None]
    else:
        new_visible_BxTxS = jnp.take_along_axis(
            extra_mask_BxTxT,
            jnp.broadcast_to(
                new_index_clipped_BxS[:, None, :], (extra_mask_BxTxT.shape[0], T, max_len)
            ),
            axis=2,
        )
    mask_BxTxS = is_old_BxS[:, None, :] | (is_new_BxS[:, None, :] & new_visible_BxTxS)

    # Key positions: old slots hold their own index, new slots the positions given now.
    new_key_pos_BxS = jnp.take_along_axis(query_positions_BxT, new_index_clipped_BxS, axis=1)
    key_pos_BxS = jnp.where(is_new_BxS, new_key_pos_BxS, slots_S[None, :])
    distance_BxTxS = query_positions_BxT[:, :, None] - key_pos_BxS[:, None, :]
    window = jnp.asarray(window, jnp.int32)
    in_window_BxTxS = (window <= 0) | (distance_BxTxS < window)
    return mask_BxTxS & in_window_BxTxS
