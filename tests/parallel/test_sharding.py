"""Bar 5 of DESIGN.md: sharded generation on 8 fake CPU devices equals one device.

Also: bad meshes fail with clear messages, the rules table puts each weight where the docs say,
the GQA rule for few kv heads, and the compiled loop never all-gathers a weight (HLO check,
with a negative control proving the check can fail).

Compile time dominates on CPU, so every mesh compiles its program exactly once (ahead of
time, which also yields the HLO text the weight check reads).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from support import random_model, spy_prefill_widths

import specjax
from specjax import api
from specjax.decoding import rejection, sequence
from specjax.drafters.draft_model import DraftModelDrafter
from specjax.models.config import ModelConfig
from specjax.models.layers import cached_kv_heads
from specjax.models.transformer import Model
from specjax.parallel import MeshError, ModelLayout, ShardedModel, hlo, make_mesh, sharded

# Target: H = 8 splits over model in {1, 2, 4, 8}; G = 2 kv heads split at model = 2 and are
# repeated per shard at model = 4, 8 (the Qwen2.5 0.5B/1.5B situation). Widths are chosen so that no
# activation has the shape of a weight matrix (the HLO check matches shapes).
TARGET = ModelConfig(
    family="qwen2",
    vocab_size=128,
    num_layers=2,
    d_model=48,
    num_heads=8,
    num_kv_heads=2,
    head_dim=8,
    ffn_dim=96,
    qkv_bias=True,
    tie_embeddings=False,
    rope_theta=1e6,
)
DRAFT = ModelConfig(
    family="llama",
    vocab_size=128,
    num_layers=1,
    d_model=40,
    num_heads=8,
    num_kv_heads=4,
    head_dim=4,
    ffn_dim=60,  # splits over model = 2, 4 but not 8
)
GAMMA, MAX_NEW = 3, 12
PROMPT_LENGTHS = [3, 7, 1, 12, 5, 9, 2, 6]  # batch 8, uneven rows

# (data, model) meshes and whether the drafter's weights are split too.
MESHES = [((8, 1), False), ((4, 2), True), ((2, 4), True), ((1, 8), False)]


@pytest.fixture(scope="module")
def target():
    return random_model(TARGET, seed=21)


@pytest.fixture(scope="module")
def draft():
    return random_model(DRAFT, seed=22)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(5)
    return [rng.integers(1, TARGET.vocab_size, n).tolist() for n in PROMPT_LENGTHS]


@pytest.fixture(scope="module")
def reference(target, draft, prompts):
    """One device, no mesh: the unchanged single-device program."""
    return specjax.generate(target, draft, prompts, gamma=GAMMA, max_new_tokens=MAX_NEW)


def _prepared(mesh, target, draft, prompts, shard_drafter, sampling=specjax.GREEDY):
    prompt, lengths = api.pad_prompts(prompts, TARGET.vocab_size)
    return sharded.prepare_generate(
        mesh,
        *target,
        DraftModelDrafter(draft[0]),
        draft[1],
        prompt,
        lengths,
        sampling,
        np.array([-1], np.int32),
        jax.random.key(0),
        shard_drafter_weights=shard_drafter,
        gamma=GAMMA,
        max_new_tokens=MAX_NEW,
        cache_size=prompt.shape[1] + MAX_NEW + GAMMA + 1,
        pad_id=0,
        verify_fn=rejection.verify_sampling,
    )


def _cache_shapes(config: ModelConfig, batches, slots: int, model: int) -> set[tuple[int, ...]]:
    """Shapes of one layer of a whole (unsplit) KV cache, for each row count in `batches`:
    what an all-gather of the cache inside the loop would produce."""
    kv_heads, _ = cached_kv_heads(config, model)
    return {(batch, slots, kv_heads, config.head_dim) for batch in batches}


def _assert_same(out, reference):
    assert out.token_lists() == reference.token_lists()
    assert out.stop_reason_names() == reference.stop_reason_names()
    assert int(out.steps) == int(reference.steps)
    for got, want in zip(jax.tree.leaves(out.stats), jax.tree.leaves(reference.stats)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    if out.tokens.sharding.mesh.shape["data"] > 1:  # per-row outputs stay split by rows
        assert out.tokens.sharding.spec[0] == "data"


def test_generate_api_data_parallel(target, draft, prompts, reference):
    """Mesh (8, 1) through `specjax.generate(..., mesh=)`; a second call with new prompts of
    the same padded shape reuses the compiled program."""
    mesh = make_mesh(8, 1)
    out = specjax.generate(target, draft, prompts, gamma=GAMMA, max_new_tokens=MAX_NEW, mesh=mesh)
    _assert_same(out, reference)
    traces = api.TRACE_COUNTS["speculative"]
    other = [row[::-1] for row in prompts]
    specjax.generate(target, draft, other, gamma=GAMMA, max_new_tokens=MAX_NEW, mesh=mesh)
    assert api.TRACE_COUNTS["speculative"] == traces


@pytest.mark.parametrize(("shape", "shard_drafter"), MESHES[1:], ids=lambda v: str(v))
def test_tensor_parallel_equals_single_device(
    target, draft, prompts, reference, shape, shard_drafter
):
    mesh = make_mesh(*shape)
    fn, args = _prepared(mesh, target, draft, prompts, shard_drafter)
    # LLVM optimisation off: compiles ~2x faster on CPU; SPMD partitioning (what the HLO
    # checks read) and the results are unaffected.
    compiled = fn.lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
    out = compiled(*args)
    _assert_same(out, reference)

    # The loop never gathers a weight of the target or the drafter (decode layout) ...
    text = compiled.as_text()
    gathers = hlo.weight_gathers(text, args[0]) + hlo.weight_gathers(text, args[1])
    assert not gathers, "\n".join(map(str, gathers))
    # ... nor a whole KV cache (what pinning a replicated GQA cache made XLA do).
    slots = args[2].shape[1] + MAX_NEW + GAMMA + 1
    rows = {8, 8 // shape[0]}  # all rows, or one data shard's
    model = shape[1]
    cache_shapes = _cache_shapes(TARGET, rows, slots, model) | _cache_shapes(
        DRAFT, rows, slots, model if shard_drafter else 1
    )
    cache_gathers = [
        op
        for op in hlo.loop_collectives(text)
        if op.kind == "all-gather" and set(op.shapes) & cache_shapes
    ]
    assert not cache_gathers, "\n".join(map(str, cache_gathers))
    # Tensor parallelism shows up as all-reduces of [rows, T, D] activations in the loop.
    reduces = [op for op in hlo.loop_collectives(text) if op.kind == "all-reduce"]
    assert any(len(s) == 3 and s[-1] == TARGET.d_model for op in reduces for s in op.shapes)


def test_sampling_equals_single_device(target, draft, prompts):
    """Sampling (temperature 1, top-k 5) with the same seed: the same tokens on a (2, 4) mesh
    as on one device. Random bits do not depend on the sharding (partitionable threefry), and
    the top-k filter over the split vocabulary is exact."""
    sampling = specjax.Sampling.create(1.0, top_k=5)
    options = {"xla_backend_optimization_level": 0}
    runs = []
    for shape in [(1, 1), (2, 4)]:  # one device, then 8
        fn, args = _prepared(make_mesh(*shape), target, draft, prompts, True, sampling)
        runs.append(fn.lower(*args).compile(compiler_options=options)(*args))
    _assert_same(runs[1], runs[0])
    assert runs[0].tau > 1.0  # some drafts accepted: the rejection path ran both ways


def test_adaptive_gamma_on_a_mesh_equals_single_device(target, draft, prompts):
    """`adaptive_gamma=True` with `mesh=` runs the adaptive loop (it was once dropped there,
    silently running fixed gamma): sampled tokens and every counter equal one device's."""
    sampling = specjax.Sampling.create(1.0, top_k=5)
    common = dict(gamma=GAMMA, max_new_tokens=MAX_NEW, sampling=sampling, adaptive_gamma=True)
    single = specjax.generate(target, draft, prompts, **common)
    out = specjax.generate(target, draft, prompts, mesh=make_mesh(4, 2), **common)
    _assert_same(out, single)
    fixed = specjax.generate(target, draft, prompts, **{**common, "adaptive_gamma": False})
    # Adaptive rows start at one draft token: fewer drafted than gamma per call.
    assert np.sum(single.stats.drafted) < GAMMA * np.sum(single.stats.verify_calls)
    assert np.sum(fixed.stats.drafted) == GAMMA * np.sum(fixed.stats.verify_calls)


def test_prefill_widths_on_a_mesh(target, draft, prompts, reference, monkeypatch):
    """A wide prompt bucket with `mesh=`: the sharded loops (autoregressive and speculative)
    are handed the prefill widths the bucket allows, as the unsharded ones are (they once
    always prefilled over the padded width), and prefill the 12-token prompts over 16 of the
    32 padded columns. Their greedy tokens equal one device's, and the reference's (a
    speculative run in the default bucket, one pass over 16)."""
    monkeypatch.setattr(sequence, "PREFILL_WIDTH", 8)  # the default 128 is too wide here
    widths = sequence.prefill_widths(32, 32)
    assert widths == (8, 16, 32)
    seen = spy_prefill_widths(monkeypatch)
    common = dict(max_new_tokens=MAX_NEW, prompt_bucket=32)
    single = specjax.generate(target, None, prompts, **common)
    mesh = make_mesh(4, 2)
    ar = specjax.generate(target, None, prompts, mesh=mesh, **common)
    spec = specjax.generate(target, draft, prompts, gamma=GAMMA, mesh=mesh, **common)
    assert seen == [widths] * 3  # one trace each: one device, then the two sharded loops
    assert ar.tokens.sharding.mesh.shape == {"data": 4, "model": 2}
    assert ar.token_lists() == single.token_lists()
    assert spec.token_lists() == single.token_lists() == reference.token_lists()
    assert ar.stop_reason_names() == spec.stop_reason_names() == single.stop_reason_names()


def test_kv_head_rule():
    """G = 2 kv heads: split at model = 2; at model = 4 and 8 each head is repeated model / G
    times, so every shard caches the one head its queries read. The cache's head axis is
    always on `model` when tensor parallel."""
    for model, (kv_heads, repeat) in [(1, (2, 1)), (2, (2, 1)), (4, (4, 2)), (8, (8, 4))]:
        layout = ModelLayout(make_mesh(8 // model, model), TARGET)
        assert cached_kv_heads(TARGET, layout.shards) == (kv_heads, repeat)
        k_spec = layout.cache_shardings().k[0].spec
        assert k_spec == P("data", None, "model" if model > 1 else None, None)
        assert len(layout.cache_shardings().k) == TARGET.num_layers
        cache = ShardedModel.wrap(Model(None, TARGET), layout).init_cache(8, 32)
        assert cache.k[0].shape == (8, 32, kv_heads, TARGET.head_dim)
    with pytest.raises(MeshError, match=r"4 kv heads and the mesh's model axis \(6\)"):
        ModelLayout(make_mesh(1, 6), TARGET.replace(num_heads=12, num_kv_heads=4, ffn_dim=96))


def test_decode_layout_rules(target):
    """The decode layout's fused columns split evenly over `model` (shard-major blocks)."""
    layout = ModelLayout(make_mesh(2, 4), TARGET)
    placed = sharded.place_params(target[1], layout)
    layer = placed.layers[0]
    assert layer.shards == 4 and layer.kv_repeat == 2
    assert layer.qkv.sharding.spec == P(None, "model")  # [D, 4 * (H/4 + 2) * Dh]
    assert layer.gate_up.sharding.spec == P(None, "model")
    assert layer.o.sharding.spec == P("model", None)
    assert layer.down.sharding.spec == P("model", None)
    assert placed.embedding.sharding.spec == P("model", None)
    assert layer.attn_norm.sharding.spec == P(None)


def test_param_rules(target):
    layout = ModelLayout(make_mesh(2, 4), TARGET)
    shardings = layout.param_shardings(target[1])
    flat = {
        jax.tree_util.keystr(path): s.spec
        for path, s in jax.tree_util.tree_leaves_with_path(shardings)
        if isinstance(s, NamedSharding)
    }

    def spec(name):
        return next(v for k, v in flat.items() if name in k)

    assert spec("['q_proj']['kernel']") == P(None, None, "model")  # [L, D, H*Dh]
    assert spec("['q_proj']['bias']") == P(None, "model")
    assert spec("['k_proj']['kernel']") == P(None, None, None)  # G=2 < 4: replicated
    assert spec("['o_proj']['kernel']") == P(None, "model", None)  # [L, H*Dh, D]
    assert spec("['gate_proj']['kernel']") == P(None, None, "model")
    assert spec("['down_proj']['kernel']") == P(None, "model", None)
    assert spec("['embedder']['embedding']") == P("model", None)  # [V, D]
    assert spec("['lm_head']['kernel']") == P(None, "model")  # [D, V]
    assert spec("['final_norm']['scale']") == P(None)
    # The drafter replicated (default): nothing on `model`.
    draft_layout = ModelLayout(make_mesh(2, 4), DRAFT, tensor_parallel=False)
    abstract = specjax.models.abstract_model(DRAFT)[1]
    for s in jax.tree.leaves(draft_layout.param_shardings(abstract)):
        assert "model" not in s.spec


def test_bad_meshes(target, draft, prompts):
    with pytest.raises(MeshError, match=r"needs 16 devices but only 8"):
        make_mesh(4, 4)
    with pytest.raises(MeshError, match=r"positive integer"):
        make_mesh(0, 2)
    with pytest.raises(MeshError, match=r"8 attention heads are not divisible .* model axis \(3\)"):
        specjax.generate(target, None, prompts, max_new_tokens=4, mesh=make_mesh(1, 3))
    with pytest.raises(MeshError, match=r"batch of 8 rows is not divisible .* data axis \(3\)"):
        specjax.generate(target, None, prompts, max_new_tokens=4, mesh=make_mesh(3, 1))
    with pytest.raises(MeshError, match=r"batch of 6 rows"):
        specjax.generate(target, None, prompts[:6], max_new_tokens=4, mesh=make_mesh(4, 2))
    # A drafter split over `model` must divide too.
    with pytest.raises(MeshError, match=r"MLP width 60 is not divisible .* \(8\)"):
        specjax.generate(
            target, draft, prompts, max_new_tokens=4, mesh=make_mesh(1, 8), shard_drafter=True
        )
    wrong_axes = jax.make_mesh((2, 4), ("batch", "tensor"))
    with pytest.raises(MeshError, match=r"axes \('data', 'model'\)"):
        specjax.generate(target, None, prompts, max_new_tokens=4, mesh=wrong_axes)


def test_weight_check_catches_a_gather():
    """Negative control: a weight split over `data` (FSDP style) that every row shard needs
    whole, and that changes each iteration (so XLA cannot hoist its gather out of the loop as
    it does for loop-invariant weights), must be all-gathered inside the loop, and
    `hlo.weight_gathers` must report it."""
    mesh = make_mesh(4, 2)
    rows = NamedSharding(mesh, P("data", None))
    columns = NamedSharding(mesh, P(None, "data"))
    w_DxF = jax.device_put(jnp.ones((48, 96)), columns)
    x_NxD = jax.device_put(jnp.ones((1024, 48)), rows)  # activations >> weight: gather w

    def loop(w_DxF, x_NxD):
        def body(_, carry):
            w_DxF, x_NxD = carry
            y_NxD = jnp.tanh(x_NxD @ w_DxF)[:, :48]
            w_DxF = jax.lax.with_sharding_constraint(w_DxF * 0.5 + jnp.mean(y_NxD), columns)
            return w_DxF, jax.lax.with_sharding_constraint(y_NxD, rows)

        return jax.lax.fori_loop(0, 3, body, (w_DxF, x_NxD))

    lowered = jax.jit(loop).lower(w_DxF, x_NxD)
    text = lowered.compile(compiler_options={"xla_backend_optimization_level": 0}).as_text()
    found = hlo.weight_gathers(text, {"w": w_DxF})
    assert [op.shapes for op in found] == [((48, 96),)]
    assert not hlo.weight_gathers(text, {"other": jnp.zeros((48, 97))})


def test_weights_placed_once(target):
    """Single-device weights given to repeated sharded calls are resharded once (the copy is
    reused while the original lives), and weights already on the mesh are used as they are."""
    layout = ModelLayout(make_mesh(2, 4), TARGET)
    first = sharded.place_params(target[1], layout)
    again = sharded.place_params(target[1], layout)
    assert all(a is b for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)))
    placed = sharded.place_params(first, layout)
    assert all(a is b for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(placed)))
    assert first.layers[0].qkv.sharding.spec == P(None, "model")
