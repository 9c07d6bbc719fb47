"""The fused RoPE + cache write + attention kernel (interpret mode on CPU) equals the jnp path
it replaces (`layers.rotate` on q and k, `cache.write_layer`, `layers.attention`), on GQA
shapes, both rotary layouts, tree masks and rows at different lengths; a tiny model decodes
and drafts speculatively the same tokens with SPECJAX_ATTENTION = jnp and = fused; and the
kernel lowers to Triton IR for CUDA without a GPU.

Tolerances: float32 1e-5 (the rotation may contract to a fused multiply-add, the online
softmax sums in blocks); bfloat16 2e-2 (the kernel casts unnormalised probabilities to bf16).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pallas_testlib import (
    assert_kernels_decode_and_draft_the_same,
    decode_step_for_cuda,
    skip_unless_triton_lowers_here,
    triton_calls,
)
from support import TINY_LLAMA, random_model

from specjax import cache as kv_cache
from specjax.models import layers
from specjax.models import pallas_rope_attention as pra

SCALE = 0.3
rope_attention = jax.jit(
    pra.rope_attention,
    static_argnames=(
        "num_heads",
        "scale",
        "layout",
        "block_s",
        "block_rows",
        "splits",
        "interpret",
    ),
)


@functools.partial(jax.jit, static_argnames=("num_heads", "layout"))
def reference(qkv_BxTxX, rotary, k_cache, v_cache, mask_BxTxS, lengths_B, num_heads, layout):
    """What `layers.decoder_layer` does between the q/k/v projection and the o projection."""
    B, T, _ = qkv_BxTxX.shape
    _, _, C, Dh = k_cache.shape
    H = num_heads
    q = layers.rotate(qkv_BxTxX[..., : H * Dh].reshape(B, T, H, Dh), rotary, layout)
    k = layers.rotate(qkv_BxTxX[..., H * Dh : (H + C) * Dh].reshape(B, T, C, Dh), rotary, layout)
    v = qkv_BxTxX[..., (H + C) * Dh :].reshape(B, T, C, Dh)
    k_cache = kv_cache.write_layer(k_cache, k, lengths_B)
    v_cache = kv_cache.write_layer(v_cache, v, lengths_B)
    out = layers.attention(q, k_cache, v_cache, mask_BxTxS, SCALE)
    return out.reshape(B, T, H * Dh), k_cache, v_cache


def tree_mask(B, parents):
    """[B, T, T]: node t sees itself and its ancestors."""
    T = len(parents)
    tree_TxT = np.eye(T, dtype=bool)
    for t, parent in enumerate(parents):
        while parent >= 0:
            tree_TxT[t, parent] = True
            parent = parents[parent]
    return jnp.asarray(np.broadcast_to(tree_TxT, (B, T, T)))


def inputs(B, T, H, C, S, Dh, lengths, dtype=jnp.float32, extra_mask=None, seed=0):
    rng = np.random.default_rng(seed)
    qkv = jnp.asarray(rng.normal(size=(B, T, (H + 2 * C) * Dh)), dtype)
    k_cache, v_cache = (jnp.asarray(rng.normal(size=(B, S, C, Dh)), dtype) for _ in range(2))
    lengths_B = jnp.asarray(lengths, jnp.int32)
    positions_BxT = lengths_B[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
    rotary = layers.Rotary.create(positions_BxT, 10000.0, Dh)
    mask = kv_cache.attention_mask(lengths_B, positions_BxT, S, 0, extra_mask)
    return qkv, rotary, k_cache, v_cache, mask, lengths_B


def run_kernel(qkv, rotary, k_cache, v_cache, mask, lengths_B, H, layout, **blocks):
    return rope_attention(
        qkv, rotary.sin[:, :, 0], rotary.cos[:, :, 0], k_cache, v_cache, mask, lengths_B,
        num_heads=H, scale=SCALE, layout=layout, interpret=True, **blocks,
    )  # fmt: skip


def check(args, H, layout="half", atol=1e-5, **blocks):
    expected = reference(*args, H, layout)
    ours = run_kernel(*args, H, layout, **blocks)
    for name, got, want in zip(("output", "key cache", "value cache"), ours, expected):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        np.testing.assert_allclose(
            np.asarray(got, np.float32), np.asarray(want, np.float32), atol=atol, rtol=atol,
            err_msg=name,
        )  # fmt: skip
    # Only slots [lengths, lengths + T) of each row change.
    T, lengths = args[0].shape[1], np.asarray(args[5])
    for b, length in enumerate(lengths):
        untouched = np.r_[0:length, length + T : args[2].shape[1]]
        np.testing.assert_array_equal(np.asarray(ours[1])[b, untouched], args[2][b, untouched])


# (B, T, H, C, S, Dh, lengths): a decode step (T = 1) and verification blocks (T = 5, 9);
# Q = H // C = 1, 2, 3, 6; an empty prefix, one ending at the cache's end, S not a multiple of
# the 16-slot blocks; 54 query rows split over 4 programs of 16 rows (block_rows=16).
SHAPES = [
    (2, 1, 4, 2, 40, 16, [5, 39]),
    (3, 5, 6, 2, 37, 16, [0, 7, 32]),
    (1, 9, 6, 1, 70, 32, [50]),
    (2, 4, 4, 4, 24, 16, [3, 20]),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-H{}-C{}-S{}-Dh{}".format(*s))
def test_matches_the_jnp_path_float32(shape):
    B, T, H, C, S, Dh, lengths = shape
    check(inputs(B, T, H, C, S, Dh, lengths), H, block_s=16, block_rows=16)


@pytest.mark.parametrize("splits", [2, 3])
def test_cache_split_over_programs_matches_the_jnp_path(splits):
    """Flash-decoding: each row block's cache walk split over 2 or 3 programs (blocks of 16
    slots; with 3 splits of a 70-slot cache the last split of the short row walks nothing),
    combined afterwards; 54 query rows in 4 row blocks."""
    check(inputs(2, 9, 6, 1, 70, 16, [50, 2]), 6, block_s=16, block_rows=16, splits=splits)


def test_rows_per_program_leave_every_number_unchanged():
    """A program's query rows do not interact: a 13-node tree's 78 rows per kv head in
    programs of 16, 32 or 64 rows (the default went 64 -> 16) give bit-identical outputs and
    caches, so the launch changes speed, not greedy tokens; and they match the jnp path."""
    parents = [-1, 0, 0, 0, 1, 1, 2, 3, 4, 4, 5, 6, 7]
    args = inputs(1, 13, 6, 1, 70, 16, [41], extra_mask=tree_mask(1, parents), seed=3)
    check(args, 6, block_s=16, block_rows=16)
    by_rows = [run_kernel(*args, 6, "half", block_s=16, block_rows=rows) for rows in (16, 32, 64)]
    for other in by_rows[1:]:
        for got, want in zip(other, by_rows[0]):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_interleaved_rotary_layout():
    check(inputs(3, 5, 6, 2, 37, 16, [0, 7, 32]), 6, "interleaved", block_s=16)


def test_matches_the_jnp_path_bfloat16():
    check(inputs(2, 5, 12, 2, 40, 16, [3, 20], jnp.bfloat16), 12, atol=2e-2, block_s=16)


def test_tree_mask():
    # Tree verification: node t sees its ancestors (root 0; 1, 2 children of 0; 3 of 1;
    # 4 of 2), not the causal prefix.
    extra = tree_mask(2, [-1, 0, 0, 1, 2])
    args = inputs(2, 5, 8, 2, 33, 16, [4, 11], extra_mask=extra, seed=1)
    assert not bool(jnp.all(args[4] == inputs(2, 5, 8, 2, 33, 16, [4, 11])[4]))
    check(args, 8, block_s=16)


def test_broken_variants_are_caught():
    """The comparison can fail: the other rotary layout, or an all-visible mask, differs."""
    args = inputs(2, 5, 6, 2, 40, 16, [3, 20])
    expected_out = np.asarray(reference(*args, 6, "half")[0])
    for broken in (
        run_kernel(*args, 6, "interleaved")[0],
        run_kernel(*args[:4], jnp.ones_like(args[4]), args[5], 6, "half")[0],
    ):
        assert not np.allclose(np.asarray(broken), expected_out, atol=1e-3)


def test_bad_shapes_are_refused():
    args = inputs(1, 1, 4, 2, 16, 8, [3])
    with pytest.raises(ValueError, match="power of two >= 16"):
        run_kernel(*args, 4, "half")
    args = inputs(1, 1, 4, 2, 16, 16, [3])
    with pytest.raises(ValueError, match="columns"):
        run_kernel(*args, 2, "half")  # qkv holds 4 query heads, not 2


def test_policy_conditions(monkeypatch):
    """Only inference-converted, unsharded layers without per-head norms, with a power-of-two
    head dim and T <= 64, take the kernel, and only under ATTENTION = "fused"."""
    config = TINY_LLAMA.replace(head_dim=16)
    model, params = random_model(config, seed=0)
    decode_layer = model.decode_params(params).layers[0]
    training_layer = layers.fuse_block(
        jax.tree.map(lambda a: a[0], params.to_pure_dict()["blocks"]), config
    )
    monkeypatch.setattr(layers, "ATTENTION", "fused")
    assert layers.uses_rope_attention(decode_layer, 64, 100, 16)
    assert not layers.uses_rope_attention(decode_layer, 65, 100, 16)
    assert not layers.uses_rope_attention(decode_layer, 1, 100, 8)
    assert not layers.uses_rope_attention(training_layer, 1, 100, 16)
    monkeypatch.setattr(layers, "ATTENTION", "jnp")
    assert not layers.uses_rope_attention(decode_layer, 1, 100, 16)


class _FakeGPU:
    """What `layers` reads of a JAX device: its client's platform version and its compute
    capability."""

    def __init__(self, platform_version: str, compute_capability: str):
        self.client = type("Client", (), {"platform_version": platform_version})()
        self.compute_capability = compute_capability


def _on_gpu(monkeypatch, platform_version="PJRT C API\ncuda 12080", capability="9.0"):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda: [_FakeGPU(platform_version, capability)])


def test_auto_policy_takes_the_kernel_on_a_hopper_gpu_with_16_bit_caches(monkeypatch):
    """ATTENTION = "auto" (the default) is "fused" on a CUDA GPU of compute capability >= 9.0
    with a 16-bit cache, "jnp" elsewhere (the CPU, float32 caches), decided when asked (not at
    import), and recorded both ways."""
    config = TINY_LLAMA.replace(head_dim=16)
    model, params = random_model(config, seed=0)
    decode_layer = model.decode_params(params).layers[0]
    monkeypatch.setattr(layers, "ATTENTION", "auto")
    assert jax.default_backend() == "cpu"
    assert layers.attention_policy() == "jnp"
    assert not layers.uses_rope_attention(decode_layer, 1, 100, 16)
    _on_gpu(monkeypatch)
    assert layers.attention_policy() == "fused"
    assert layers.uses_rope_attention(decode_layer, 1, 100, 16)
    assert layers.uses_rope_attention(decode_layer, 1, 100, 16, jnp.float16)
    assert not layers.uses_rope_attention(decode_layer, 1, 100, 16, jnp.float32)
    policies = layers.kernel_policies()
    assert (policies["attention"], policies["attention_setting"]) == ("fused", "auto")
    assert layers.kernel_policies(jnp.float32)["attention"] == "jnp"
    monkeypatch.setattr(layers, "ATTENTION", "fused")  # forced: float32 too
    assert layers.uses_rope_attention(decode_layer, 1, 100, 16, jnp.float32)
    monkeypatch.setattr(layers, "ATTENTION", "jnp")  # an explicit setting wins on a GPU too
    assert layers.attention_policy() == "jnp"


@pytest.mark.parametrize(
    "platform_version, capability",
    [("PJRT C API\nrocm 60300", "9.0"), ("PJRT C API\ncuda 12080", "7.5"),
     ("PJRT C API\ncuda 12080", "8.0"), ("PJRT C API\ncuda 12080", "")],
    ids=["rocm", "t4", "a100", "unknown"],
)  # fmt: skip
def test_auto_policy_keeps_unmeasured_gpus_on_the_jnp_path(monkeypatch, platform_version,
                                                            capability):  # fmt: skip
    """ROCm and NVIDIA GPUs older than Hopper (where the kernel was never measured; a T4
    lacks bf16 tensor cores) stay on the jnp path under "auto"."""
    monkeypatch.setattr(layers, "ATTENTION", "auto")
    _on_gpu(monkeypatch, platform_version, capability)
    assert layers.attention_policy() == "jnp"


def test_model_decodes_and_drafts_the_same_with_the_fused_kernel(monkeypatch):
    """Greedy single-token steps give the same tokens and close logits with ATTENTION = jnp
    and = fused (q/k/v biases on); greedy EAGLE speculative decoding with the kernel on (an
    8-row prefill on the jnp path, verification blocks of gamma + 1 = 4 rows and drafting
    steps on the kernel) gives the kernel's own autoregressive tokens."""
    assert_kernels_decode_and_draft_the_same(
        monkeypatch,
        TINY_LLAMA.replace(num_layers=1, vocab_size=78, qkv_bias=True, head_dim=16),
        "ATTENTION",
        "jnp",
        "fused",
    )


def test_decode_step_lowers_to_one_triton_kernel_per_layer(monkeypatch):
    """Lowered for CUDA (no GPU needed: Pallas emits Triton IR at lowering), a decode step of a
    2-layer model holds one fused attention kernel per layer: every Triton lowering
    constraint of Pallas (power-of-two tiles, dot sizes, the barrier) holds."""
    skip_unless_triton_lowers_here()
    config = TINY_LLAMA.replace(qkv_bias=True, head_dim=16)
    model, params = random_model(config, seed=1)
    decode_params = model.decode_params(params)
    monkeypatch.setattr(layers, "ATTENTION", "fused")
    text = decode_step_for_cuda(model, decode_params, 5, monkeypatch)
    assert triton_calls(text) == config.num_layers


def test_split_kernel_lowers_to_triton():
    """The flash-decoding variant (splits > 1) also meets Triton's lowering constraints."""
    skip_unless_triton_lowers_here()
    qkv, rotary, k_cache, v_cache, mask, lengths = inputs(1, 1, 12, 2, 640, 128, [512])
    text = (
        rope_attention.trace(
            qkv, rotary.sin[:, :, 0], rotary.cos[:, :, 0], k_cache, v_cache, mask, lengths,
            num_heads=12, scale=SCALE, layout="half", splits=8, interpret=False,
        )
        .lower(lowering_platforms=("cuda",))
        .as_text()
    )  # fmt: skip
    assert triton_calls(text) == 1


def test_launch_configuration_is_parsed_and_bad_keys_are_refused():
    assert pra.parse_launch("block_s=128, splits=8") == {"block_s": 128, "splits": 8}
    assert pra.parse_launch("") == {}
    with pytest.raises(ValueError, match="'block=128' is not one of"):
        pra.parse_launch("block=128")
    with pytest.raises(ValueError, match="'num_warps=x' is not one of"):
        pra.parse_launch("num_warps=x")
    with pytest.raises(ValueError, match="'splits=0' is not one of"):
        pra.parse_launch("splits=0")


def test_launch_in_effect_is_recorded(monkeypatch):
    """Results record the launch a call without arguments takes: the defaults (16 query rows
    per program) with SPECJAX_ROPE_ATTENTION's keys over them."""
    assert pra.launch_in_effect()["block_rows"] == 16
    monkeypatch.setattr(pra, "LAUNCH", {"block_rows": 64})
    assert pra.launch_in_effect() == pra.DEFAULT_LAUNCH | {"block_rows": 64}
    recorded = layers.kernel_policies()["rope_attention_launch"]
    assert "block_rows=64" in recorded.split(",") and "splits=8" in recorded.split(",")
