"""Top-k over long rows (a vocabulary) as two short ones: the same result as `lax.top_k`.

Dimension legend: V row length (the last axis; any leading axes are rows), G groups, W = V / G
(after padding V up to a multiple of G), k.

Tree drafting takes the top K of one to K draft-vocabulary rows several times an iteration
(`drafters/tree_expansion.py`). On a GPU, XLA's top-k over so few long rows is slow: on an
H200 a top-4 of one 32,768-entry row took 27.6 µs and of one 151,936-entry row 71.2 µs, against
18.8 and 19.2 µs in two stages (`experiments/h200/top_k_bench.py`, docs/benchmarks.md).
Splitting each row into G groups of W runs stage 1 (the top k of every group) over G rows at
once, and stage 2 (the top k of the G * k survivors) over a short row.

Exactly `lax.top_k`'s values and indices, ties included (the lower index first):
  * an entry of the global top k has fewer than k entries before it in the order (value
    descending, index ascending), so fewer than k in its own group: stage 1 keeps it;
  * the survivors are laid out group by group, each group's in that order, so among equal
    values a lower position is a lower index, and stage 2's tie rule (lower position first)
    is the global one.
Padding entries (when G does not divide V) hold the dtype's lowest value at indices >= V, after
every real entry of equal value, so they are never among the k <= V picked.

`SPECJAX_TOP_K` (read at import) picks the method: `auto` (two stages on a GPU, `lax.top_k`
elsewhere), `xla` (always `lax.top_k`), `split` (always two stages, rows long enough),
`pallas` (stage 1 as one Pallas kernel, `pallas_top_k.py`, on a GPU; `lax.top_k` elsewhere)
or `interpret` (that kernel in Pallas's interpreter: tests). The kernel is not yet measured
against `split` on a GPU, so `auto` does not pick it.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

TOP_K = os.environ.get("SPECJAX_TOP_K", "auto")
METHODS = ("auto", "xla", "split", "pallas", "interpret")

GROUPS = 128
# Rows shorter than this stay one stage: their single program is short already.
MIN_SPLIT_LENGTH = 4096


def method_in_effect(method: str | None = None) -> str:
    """ "xla", "split", "pallas" or "interpret": `method` (default SPECJAX_TOP_K) with "auto"
    resolved by backend, and "pallas" off a GPU resolved to "xla"."""
    method = method or TOP_K
    if method not in METHODS:
        raise ValueError(f"SPECJAX_TOP_K must be one of {', '.join(METHODS)}, got {method!r}")
    on_gpu = jax.default_backend() == "gpu"
    if method == "auto":
        return "split" if on_gpu else "xla"
    if method == "pallas" and not on_gpu:
        return "xla"
    return method


def top_k(
    x_xV: jax.Array, k: int, *, method: str | None = None, groups: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """(values [..., k], int32 indices [..., k]) of the k largest entries of each row, as
    `jax.lax.top_k` returns them (module docstring), by `method` (default SPECJAX_TOP_K) in
    `groups` groups (default GROUPS)."""
    V = x_xV.shape[-1]
    groups = groups or GROUPS
    method = method_in_effect(method)
    if method == "xla" or V < max(MIN_SPLIT_LENGTH, groups * k):
        values, indices = jax.lax.top_k(x_xV, k)
        return values, indices.astype(jnp.int32)
    if method in ("pallas", "interpret"):
        from specjax.models import pallas_top_k  # late: Pallas only where it is asked for

        return pallas_top_k.top_k(x_xV, k, interpret=method == "interpret")
    G = groups
    W = -(-V // G)  # ceil(V / G)
    if G * W != V:
        pad = [(0, 0)] * (x_xV.ndim - 1) + [(0, G * W - V)]
        x_xV = jnp.pad(x_xV, pad, constant_values=_lowest(x_xV.dtype))
    lead = x_xV.shape[:-1]
    # Stage 1: the top k of each group; group g holds indices g * W .. g * W + W - 1.
    group_values_xGxk, group_index_xGxk = jax.lax.top_k(x_xV.reshape(*lead, G, W), k)
    offsets_Gx1 = (W * jnp.arange(G, dtype=jnp.int32))[:, None]
    index_xGxk = group_index_xGxk.astype(jnp.int32) + offsets_Gx1
    # Stage 2: the top k of the G * k survivors, laid out group by group.
    values_xk, position_xk = jax.lax.top_k(group_values_xGxk.reshape(*lead, G * k), k)
    indices_xk = jnp.take_along_axis(index_xGxk.reshape(*lead, G * k), position_xk, axis=-1)
    return values_xk, indices_xk


def _lowest(dtype) -> jax.Array:
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.array(-jnp.inf, dtype)
    return jnp.array(jnp.iinfo(dtype).min, dtype)
