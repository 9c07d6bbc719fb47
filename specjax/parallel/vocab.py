"""Top-k / top-p filtering of logits whose vocabulary is split over the `model` axis.

Dimension legend: V vocab, N = V / M tokens per shard, M shards on the mesh axis, C candidates
kept per shard, X any leading shape (batch, positions).

Under tensor parallelism the LM head leaves the logits [..., V] split over `model`. Greedy
argmax, softmax and categorical sampling partition well under GSPMD (local reductions, then
an all-reduce of one value per row), but top-k and top-p need the sorted vocabulary, and
GSPMD all-gathers the whole [..., V] logits inside the decode loop to sort them (seen in the
compiled HLO: tests/parallel). Here, inside `jax.shard_map`:

  1. every shard takes its C largest logits (`lax.top_k`), and only those M * C candidates
     are all-gathered; every logit above `floor`, the largest of the shards' C-th values, is
     a candidate, so above it the sorted candidates are the sorted vocabulary;
  2. the softmax normaliser over the whole vocabulary comes from a pmax and a psum;
  3. the top-k / top-p cut is found on the sorted candidates exactly as
     `decoding.sampling.filter_logits` finds it on the sorted vocabulary, and each shard
     applies the resulting threshold to its own slice.

This is exact whenever the kept set (and the top-k set that renormalises it) lies strictly
above `floor`. Otherwise (a large k, a flat distribution under top-p, many of the largest
logits on one shard) a `lax.cond` takes the exact slow path, the all-gather of the logits
GSPMD would have done every step; tests/parallel/test_vocab.py covers both.

Which tokens survive does not depend on the split: the result equals `filter_logits` on one
device (ties at the cut are all kept in both).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from specjax.decoding import sampling as sampling_lib

CANDIDATES_PER_SHARD = 64


@dataclasses.dataclass(frozen=True)
class VocabParallelFilter:
    """`Sampling.vocab_filter` for logits split over `axis` of `mesh` (hashable: static).

    Fields:
      mesh: the device mesh.
      axis: the mesh axis the vocabulary is split over.
      candidates: C, logits per shard gathered for the cut (more: the slow path is rarer).
    """

    mesh: Mesh
    axis: str = "model"
    candidates: int = CANDIDATES_PER_SHARD

    def __call__(self, scaled_logits_xV: jax.Array, top_k: jax.Array, top_p: jax.Array):
        """Temperature-scaled float32 logits -> the same with filtered tokens at -inf."""
        M = self.mesh.shape[self.axis]
        V = scaled_logits_xV.shape[-1]
        if V % M:
            raise ValueError(f"vocabulary {V} does not split over {M} shards of {self.axis!r}")
        C = min(self.candidates, V // M)
        spec = P(*([None] * (scaled_logits_xV.ndim - 1)), self.axis)
        body = functools.partial(_filter_shard, axis=self.axis, candidates=C, vocab=V)
        return jax.shard_map(
            body, mesh=self.mesh, in_specs=(spec, P(), P()), out_specs=spec, check_vma=False
        )(scaled_logits_xV, top_k, top_p)


def _filter_shard(logits_xN, top_k, top_p, *, axis: str, candidates: int, vocab: int):
    """One shard's part of `VocabParallelFilter.__call__` (inside shard_map)."""
    k = jnp.where(top_k > 0, top_k, vocab)
    local_top_xC = jax.lax.top_k(logits_xN, candidates)[0]
    # Every logit above `floor` is among its shard's C largest, hence a candidate: the sorted
    # candidates above `floor` are exactly the sorted vocabulary's first entries.
    floor_x1 = jax.lax.pmax(local_top_xC[..., -1:], axis)
    cand_xMC = jax.lax.all_gather(local_top_xC, axis, axis=-1, tiled=True)
    sorted_xS = -jnp.sort(-cand_xMC, axis=-1)  # the M * C candidates, descending
    S = sorted_xS.shape[-1]
    # Softmax normaliser of the top-k renormalisation: over the k largest candidates when
    # k <= S, over the whole vocabulary when there is no top-k.
    max_x1 = sorted_xS[..., :1]
    exp_xS = jnp.exp(sorted_xS - max_x1)
    in_top_k_xS = jnp.arange(S) < k
    candidates_sum_x1 = jnp.sum(jnp.where(in_top_k_xS, exp_xS, 0.0), axis=-1, keepdims=True)
    vocab_sum_x1 = jax.lax.psum(jnp.sum(jnp.exp(logits_xN - max_x1), -1, keepdims=True), axis)
    normaliser_x1 = jnp.where(k <= S, candidates_sum_x1, vocab_sum_x1)
    mass_xS = jnp.where(in_top_k_xS, exp_xS / normaliser_x1, 0.0)
    fast_threshold_x1 = sampling_lib.kept_threshold(sorted_xS, mass_xS, k, top_p)
    # The candidate answer is exact when the kept set and the top-k set used for the
    # normaliser both lie strictly above `floor`.
    kth_x1 = jnp.take_along_axis(
        sorted_xS, jnp.broadcast_to(jnp.minimum(k, S) - 1, floor_x1.shape), axis=-1
    )
    top_k_inside_x1 = (k >= vocab) | ((k <= S) & (kth_x1 > floor_x1))
    exact = jnp.all((fast_threshold_x1 > floor_x1) & top_k_inside_x1)

    def slow(_):
        everything_xV = jax.lax.all_gather(logits_xN, axis, axis=-1, tiled=True)
        return sampling_lib.sorted_threshold(everything_xV, k, top_p)

    threshold_x1 = jax.lax.cond(exact, lambda _: fast_threshold_x1, slow, None)
    return jnp.where(logits_xN >= threshold_x1, logits_xN, -jnp.inf)
