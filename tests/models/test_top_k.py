"""The two-stage top-k equals `lax.top_k`: values, indices and the order of ties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.models import top_k as top_k_lib


def _rows(seed, shape, dtype, distinct_values):
    """Random rows over few distinct values (many ties, across groups too) in `dtype`."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, distinct_values, size=shape).astype(np.float32)
    return jnp.asarray(values, dtype)


@pytest.mark.parametrize(
    "shape, k, groups",
    [
        ((2, 32768), 4, 128),  # a draft vocabulary, G divides V
        ((1, 3, 5000), 8, 64),  # padded: 5000 = 64 * 79 - 56
        ((4, 4096), 1, 128),
        ((1, 151936), 10, 128),  # Qwen's vocabulary: padded to 128 * 1187
    ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_split_top_k_equals_lax_top_k_ties_included(shape, k, groups, dtype):
    for distinct in (3, 50, 100_000):  # heavy ties, some, almost none
        x = _rows(len(shape) * k + distinct, shape, dtype, distinct)
        want_values, want_indices = jax.lax.top_k(x, k)
        values, indices = top_k_lib.top_k(x, k, method="split", groups=groups)
        assert indices.dtype == jnp.int32 and values.dtype == x.dtype
        np.testing.assert_array_equal(np.asarray(indices), np.asarray(want_indices))
        np.testing.assert_array_equal(
            np.asarray(values, np.float32), np.asarray(want_values, np.float32)
        )


def test_split_top_k_never_picks_padding_over_real_lowest_entries():
    """A row of -inf but k finite entries: padding (also -inf, at indices >= V) must lose every
    tie against real -inf entries."""
    x = jnp.full((1, 4100), -jnp.inf).at[0, 7].set(1.0)
    values, indices = top_k_lib.top_k(x, 3, method="split", groups=64)
    want_values, want_indices = jax.lax.top_k(x, 3)
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(want_indices))
    assert np.asarray(indices).max() < 4100 and float(values[0, 0]) == 1.0


def test_short_rows_and_bad_methods():
    x = _rows(0, (2, 300), jnp.float32, 7)
    np.testing.assert_array_equal(  # below the split length: one stage, same answer
        np.asarray(top_k_lib.top_k(x, 3, method="split")[1]), np.asarray(jax.lax.top_k(x, 3)[1])
    )
    assert top_k_lib.method_in_effect("auto") == (
        "split" if jax.default_backend() == "gpu" else "xla"
    )
    with pytest.raises(ValueError, match="SPECJAX_TOP_K must be one of"):
        top_k_lib.method_in_effect("fast")


@pytest.mark.parametrize("tree", ["3,2", "dynamic:depth=3,top_k=3,nodes=6"])
def test_trees_drafted_with_the_split_top_k_are_the_same_trees(monkeypatch, tree):
    """Tree drafting through the two-stage top-k (forced on, with groups small enough for a
    64-token vocabulary) drafts the same trees: the same tokens and the same acceptance."""
    from support import tree_decoding_before_and_after

    calls = []
    original = jax.lax.top_k

    def patch():
        monkeypatch.setattr(top_k_lib, "TOP_K", "split")
        monkeypatch.setattr(top_k_lib, "GROUPS", 8)
        monkeypatch.setattr(top_k_lib, "MIN_SPLIT_LENGTH", 16)
        monkeypatch.setattr(jax.lax, "top_k", lambda x, k: calls.append(x.shape) or original(x, k))

    one_stage, two_stage = tree_decoding_before_and_after(tree, patch)
    assert any(shape[-2:] == (8, 8) for shape in calls)  # stage 1 ran: 64 = 8 groups of 8
    assert two_stage.token_lists() == one_stage.token_lists()
    assert float(two_stage.tau) == float(one_stage.tau) > 1.0


@pytest.mark.parametrize(
    "shape, k, block",
    [
        ((2, 32768), 4, 2048),  # a draft vocabulary: 16 blocks
        ((1, 3, 5000), 8, 1024),  # leading axes; the last block holds 904 entries
        ((1, 4100), 3, 4096),  # the last block holds 4 < block entries
        ((2, 100), 5, 128),  # one block, mostly padding
    ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_top_k_equals_lax_top_k_ties_included(shape, k, block, dtype):
    """The one-kernel stage 1 (interpret mode) gives `lax.top_k`'s values and indices, the
    order of ties included."""
    from specjax.models import pallas_top_k

    for distinct in (3, 100_000):  # heavy ties, almost none
        x = _rows(len(shape) * k + distinct, shape, dtype, distinct)
        want_values, want_indices = jax.lax.top_k(x, k)
        values, indices = pallas_top_k.top_k(x, k, block=block, interpret=True)
        assert indices.dtype == jnp.int32 and values.dtype == x.dtype
        assert values.shape == indices.shape == shape[:-1] + (k,)
        np.testing.assert_array_equal(np.asarray(indices), np.asarray(want_indices))
        np.testing.assert_array_equal(
            np.asarray(values, np.float32), np.asarray(want_values, np.float32)
        )


@pytest.mark.parametrize("real", [7, 4099])
def test_pallas_top_k_never_picks_padding_over_real_lowest_entries(real):
    """A row of -inf but one finite entry, in the first block or in a short last one (4
    entries, 5 picked): real -inf entries win every tie against the padding past V."""
    from specjax.models import pallas_top_k

    x = jnp.full((1, 4100), -jnp.inf).at[0, real].set(1.0)
    values, indices = pallas_top_k.top_k(x, 5, block=2048, interpret=True)
    want_values, want_indices = jax.lax.top_k(x, 5)
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(want_indices))
    np.testing.assert_array_equal(np.asarray(values), np.asarray(want_values))


def test_pallas_top_k_refusals_and_method():
    from specjax.models import pallas_top_k

    x = _rows(0, (1, 64), jnp.float32, 5)
    with pytest.raises(ValueError, match="1 <= k <= the row length 64"):
        pallas_top_k.top_k(x, 65, interpret=True)
    with pytest.raises(ValueError, match="power of two >= k"):
        pallas_top_k.top_k(x, 4, block=48, interpret=True)
    with pytest.raises(ValueError, match="power of two >= k"):
        pallas_top_k.top_k(x, 8, block=4, interpret=True)
    # "pallas" is the kernel on a GPU only; "interpret" runs it anywhere.
    on_gpu = jax.default_backend() == "gpu"
    assert top_k_lib.method_in_effect("pallas") == ("pallas" if on_gpu else "xla")
    assert top_k_lib.method_in_effect("interpret") == "interpret"
    long = _rows(1, (2, 8192), jnp.float32, 11)
    np.testing.assert_array_equal(
        np.asarray(top_k_lib.top_k(long, 4, method="interpret")[1]),
        np.asarray(jax.lax.top_k(long, 4)[1]),
    )


def test_pallas_top_k_lowers_to_one_triton_call_for_cuda():
    """Lowered for CUDA (Triton IR, where jaxlib emits it without a GPU), stage 1 over a
    32k draft vocabulary is one Triton kernel."""
    from pallas_testlib import skip_unless_triton_lowers_here, triton_calls

    from specjax.models import pallas_top_k

    skip_unless_triton_lowers_here()
    rows = jax.ShapeDtypeStruct((4, 32768), jnp.float32)
    top_4 = jax.jit(lambda x: pallas_top_k.top_k(x, 4))
    assert triton_calls(top_4.trace(rows).lower(lowering_platforms=("cuda",)).as_text()) == 1


def test_trees_drafted_with_the_pallas_top_k_are_the_same_trees(monkeypatch):
    """Tree drafting through the one-kernel top-k (interpret mode, blocks of 16 over the
    64-token vocabulary) drafts the same trees: the same tokens and the same acceptance."""
    from support import tree_decoding_before_and_after

    from specjax.models import pallas_top_k

    calls = []
    original = pallas_top_k.top_k

    def patch():
        monkeypatch.setattr(top_k_lib, "TOP_K", "interpret")
        monkeypatch.setattr(top_k_lib, "MIN_SPLIT_LENGTH", 16)
        monkeypatch.setattr(top_k_lib, "GROUPS", 4)
        monkeypatch.setattr(pallas_top_k, "BLOCK", 16)
        monkeypatch.setattr(
            pallas_top_k, "top_k", lambda *a, **k: calls.append(a[0].shape) or original(*a, **k)
        )

    one_stage, kernel = tree_decoding_before_and_after("dynamic:depth=3,top_k=3,nodes=6", patch)
    assert calls  # the drafting went through the kernel
    assert kernel.token_lists() == one_stage.token_lists()
    assert float(kernel.tau) == float(one_stage.tau) > 1.0
