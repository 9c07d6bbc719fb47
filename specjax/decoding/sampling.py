"""Turning logits into a distribution and drawing from it: greedy, temperature, top-k, top-p.

Dimension legend: B batch, K positions, V vocab.

Whether decoding is greedy and whether a top-k/top-p filter is active change the compiled
program, so they are static fields; the values (temperature, k, p) are arrays, so a new
temperature or a new k reuses the compiled program.

The same `probs` transform is applied to the target's and the draft's logits before
rejection sampling: that is what makes speculative sampling reproduce the *filtered* target
distribution exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Sampling:
    """Sampling settings.

    Fields:
      temperature: float32 scalar array (unused when greedy).
      top_k: int32 scalar array, keep the k most likely tokens (0 = off).
      top_p: float32 scalar array, keep the smallest set of mass >= p (1.0 = off).
      greedy: static; argmax decoding (temperature 0).
      filtered: static; a top-k or top-p filter is active (needs a sort of V per position).
      vocab_filter: static; None, or a callable (scaled_logits, top_k, top_p) -> filtered
        logits that does the top-k/top-p cut where the vocabulary is split over devices
        (`specjax.parallel.vocab.VocabParallelFilter`; the sharded loop sets it). It must
        return what `filter_logits` returns on one device.
    """

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    greedy: bool = dataclasses.field(metadata=dict(static=True))
    filtered: bool = dataclasses.field(metadata=dict(static=True))
    vocab_filter: Callable[..., jax.Array] | None = dataclasses.field(
        default=None, metadata=dict(static=True)
    )

    @staticmethod
    def create(
        temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None
    ) -> Sampling:
        """Validated settings; temperature 0 means greedy."""
        if temperature is None or not 0 <= temperature < float("inf"):
            # inf would flatten every distribution to uniform noise; nan compares false.
            raise ValueError(f"temperature must be >= 0 and finite (0 = greedy), got {temperature}")
        if top_k is not None and (int(top_k) != top_k or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
        greedy = temperature == 0.0
        filtered = not greedy and (top_k is not None or (top_p is not None and top_p < 1.0))
        return Sampling(
            temperature=jnp.asarray(temperature if not greedy else 1.0, jnp.float32),
            top_k=jnp.asarray(top_k or 0, jnp.int32),
            top_p=jnp.asarray(1.0 if top_p is None else top_p, jnp.float32),
            greedy=greedy,
            filtered=filtered,
        )


# Built from numpy scalars, not device arrays: importing specjax must not start a JAX backend,
# because multi-process runs call jax.distributed.initialize() first (specjax.parallel).
GREEDY = Sampling(
    temperature=np.float32(1.0),
    top_k=np.int32(0),
    top_p=np.float32(1.0),
    greedy=True,
    filtered=False,
)


def filter_logits(logits_xV: jax.Array, sampling: Sampling) -> jax.Array:
    """Applies temperature, then top-k, then top-p (the order HF uses); -inf where cut.

    Works on any leading shape. Ties at the cut-off are all kept, so the result does not
    depend on how a sort orders equal values.
    """
    logits_xV = logits_xV.astype(jnp.float32) / sampling.temperature
    if not sampling.filtered:
        return logits_xV
    if sampling.vocab_filter is not None:
        return sampling.vocab_filter(logits_xV, sampling.top_k, sampling.top_p)
    k = jnp.where(sampling.top_k > 0, sampling.top_k, logits_xV.shape[-1])
    threshold_x1 = sorted_threshold(logits_xV, k, sampling.top_p)
    return jnp.where(logits_xV >= threshold_x1, logits_xV, -jnp.inf)


def sorted_threshold(logits_xV: jax.Array, k: jax.Array, top_p: jax.Array) -> jax.Array:
    """`kept_threshold` of the whole vocabulary: sort it, renormalise over the top k."""
    sorted_xV = -jnp.sort(-logits_xV, axis=-1)  # descending
    masked_sorted_xV = jnp.where(jnp.arange(logits_xV.shape[-1]) < k, sorted_xV, -jnp.inf)
    return kept_threshold(sorted_xV, jax.nn.softmax(masked_sorted_xV, axis=-1), k, top_p)


def kept_threshold(
    sorted_xS: jax.Array, sorted_probs_xS: jax.Array, k: jax.Array, top_p: jax.Array
) -> jax.Array:
    """The smallest logit kept by top-k then top-p: [..., 1].

    Args:
      sorted_xS: logits sorted descending (the whole vocabulary, or a prefix of it that
        holds the kept set).
      sorted_probs_xS: their probabilities under the top-k renormalisation (0 past rank k).
      k: top-k (the vocabulary size when off).
      top_p: top-p (1.0 when off).
    A token is kept if it is among the k largest and the mass strictly before it is < p:
    the smallest prefix reaching p; at least one token always stays.
    """
    in_top_k_xS = jnp.arange(sorted_xS.shape[-1]) < k
    mass_before_xS = jnp.cumsum(sorted_probs_xS, axis=-1) - sorted_probs_xS
    keep_xS = in_top_k_xS & (mass_before_xS < top_p)
    num_kept_x1 = jnp.maximum(jnp.sum(keep_xS, axis=-1, keepdims=True), 1)
    return jnp.take_along_axis(sorted_xS, num_kept_x1 - 1, axis=-1)


def probs(logits_xV: jax.Array, sampling: Sampling) -> jax.Array:
    """The distribution sampling draws from (float32); one-hot argmax when greedy."""
    if sampling.greedy:
        return jax.nn.one_hot(jnp.argmax(logits_xV, axis=-1), logits_xV.shape[-1])
    return jax.nn.softmax(filter_logits(logits_xV, sampling), axis=-1)


def sample_from_probs(rng: jax.Array, probs_xV: jax.Array) -> jax.Array:
    """Draws one token per leading index from explicit probabilities."""
    # log(0) = -inf: categorical never picks a zero-probability token.
    return jax.random.categorical(rng, jnp.log(probs_xV), axis=-1).astype(jnp.int32)


def sample(rng: jax.Array, logits_xV: jax.Array, sampling: Sampling) -> jax.Array:
    """Next token(s) from logits: argmax when greedy, else a draw from `probs`."""
    if sampling.greedy:
        return jnp.argmax(logits_xV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits_xV, sampling), axis=-1).astype(
        jnp.int32
    )
