"""The one-kernel cache move (interpret mode on CPU) equals `cache.move_slots`' jnp path, bit
for bit: overlapping moves, identity moves, per-row starts, widths that are not powers of two,
float32 and bfloat16, with either launch ("row": one program per batch row, "array": one
per row and array); tree decoding through it drafts, verifies and emits exactly what it does
through the jnp path; a bad SPECJAX_CACHE_MOVE or SPECJAX_CACHE_MOVE_PROGRAMS is refused by
name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import tree_decoding_before_and_after

from specjax import cache as kv_cache
from specjax.models import layers, pallas_cache_move


def _cache(B, S, L, C, Dh, seed=0):
    rng = np.random.default_rng(seed)
    k = tuple(jnp.asarray(rng.normal(size=(B, S, C, Dh)), jnp.float32) for _ in range(L))
    v = tuple(jnp.asarray(rng.normal(size=(B, S, C, Dh)), jnp.bfloat16) for _ in range(L))
    return kv_cache.KVCache(k=k, v=v, lengths=jnp.full((B,), S // 2, jnp.int32))


@pytest.mark.parametrize("programs", pallas_cache_move.PROGRAM_CHOICES)
@pytest.mark.parametrize(
    "C, Dh, start, source",
    [
        (3, 4, [10, 5], [[2, 0, 3, 1], [0, 1, 2, 3]]),  # overlap (row 0), identity (row 1)
        (2, 8, [0, 20], [[5, 6, 7, 8], [3, 0, 1, 2]]),  # W = 16, a power of two
        (1, 6, [7, 1], [[1, 1, 4], [2, 2, 2]]),  # repeated sources
    ],
)
def test_kernel_moves_what_the_jnp_path_moves(C, Dh, start, source, programs):
    cache = _cache(2, 32, 3, C, Dh, seed=C * Dh)
    start_B, source_BxM = jnp.asarray(start), jnp.asarray(source)
    want = kv_cache.move_slots(cache, start_B, source_BxM)  # the jnp path
    moved = pallas_cache_move.move_slots(
        cache.k + cache.v, start_B, source_BxM, programs=programs, interpret=True
    )
    for expected, got in zip(want.k + want.v, moved, strict=True):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected, np.float32))
    # The moves did something: a slot that received another's entries changed.
    assert not np.array_equal(np.asarray(moved[0]), np.asarray(cache.k[0]))


@pytest.mark.parametrize("programs", pallas_cache_move.PROGRAM_CHOICES)
def test_tree_decoding_through_the_kernel_is_unchanged(monkeypatch, programs):
    """Static and dynamic trees move through the same `commit.move_slots`: a dynamic tree
    (traced paths, moves that overlap or stay in place) covers both."""
    tree = "dynamic:depth=3,top_k=3,nodes=6"
    calls = []
    original = pallas_cache_move.move_slots

    def patch():
        monkeypatch.setattr(layers, "CACHE_MOVE", "interpret")
        monkeypatch.setattr(pallas_cache_move, "PROGRAMS", programs)
        monkeypatch.setattr(
            pallas_cache_move, "move_slots", lambda *a, **k: calls.append(1) or original(*a, **k)
        )

    jnp_path, kernel_path = tree_decoding_before_and_after(tree, patch)
    assert calls  # the loop moved through the kernel
    assert kernel_path.token_lists() == jnp_path.token_lists()
    assert float(kernel_path.tau) == float(jnp_path.tau) > 1.0


def test_bad_move_method_is_refused(monkeypatch):
    monkeypatch.setattr(layers, "CACHE_MOVE", "cuda")
    with pytest.raises(ValueError, match="SPECJAX_CACHE_MOVE must be one of"):
        layers.cache_move_policy()
    with pytest.raises(ValueError, match="SPECJAX_CACHE_MOVE must be one of"):
        layers.check_kernel_environment()
    one_gpu = jax.default_backend() == "gpu" and jax.device_count() == 1
    monkeypatch.setattr(layers, "CACHE_MOVE", "pallas")  # off a one-device GPU: the jnp path
    assert layers.cache_move_policy() == ("pallas" if one_gpu else "xla")
    monkeypatch.setattr(layers, "CACHE_MOVE", "auto")  # the default: the jnp path here (CPU)
    if not one_gpu:
        assert layers.cache_move_policy() == "xla"


def test_bad_launch_of_the_kernel_is_refused(monkeypatch):
    monkeypatch.setattr(pallas_cache_move, "PROGRAMS", "warp")
    with pytest.raises(ValueError, match="SPECJAX_CACHE_MOVE_PROGRAMS must be one of"):
        layers.check_kernel_environment()
    cache = _cache(1, 8, 1, 1, 2)
    with pytest.raises(ValueError, match="SPECJAX_CACHE_MOVE_PROGRAMS must be one of"):
        pallas_cache_move.move_slots(
            cache.k + cache.v, jnp.asarray([1]), jnp.asarray([[0]]), interpret=True
        )
    monkeypatch.setattr(pallas_cache_move, "PROGRAMS", "array")
    assert layers.kernel_policies()["cache_move_programs"] == "array"


@pytest.mark.parametrize("programs", pallas_cache_move.PROGRAM_CHOICES)
def test_kernel_lowers_to_one_triton_call_for_cuda(programs):
    """Lowered for CUDA (Triton IR, where jaxlib emits it without a GPU), a move of every
    layer is one Triton kernel, with either launch: the launch count the kernel exists for."""
    from pallas_testlib import skip_unless_triton_lowers_here, triton_calls

    skip_unless_triton_lowers_here()
    cache = _cache(1, 64, 4, 3, 64)  # SmolLM2-like: W = 192, not a power of two
    start, source = jnp.asarray([9]), jnp.asarray([[4, 0, 7, 2]])
    move = jax.jit(
        lambda arrays, s, m: pallas_cache_move.move_slots(arrays, s, m, programs=programs)
    )
    text = move.trace(cache.k + cache.v, start, source).lower(lowering_platforms=("cuda",))
    assert triton_calls(text.as_text()) == 1
