"""`layers.project`: a single activation row is padded to two (XLA:GPU would otherwise turn the
vector-matrix dot into a multiply + reduce), and the padded dot gives the plain one's result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.models import layers


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (2, 1)], ids=["single-row", "T3", "B2"])
def test_project_equals_plain_dot(monkeypatch, shape):
    x = jax.random.normal(jax.random.key(0), (*shape, 24))
    w = jax.random.normal(jax.random.key(1), (24, 40))
    reference = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    for policy in ("pad", "plain"):
        monkeypatch.setattr(layers, "SINGLE_ROW_DOTS", policy)
        out = jax.jit(lambda a, b: layers.project(a, b))(x, w)  # a new trace per policy
        assert out.shape == (*shape, 40)
        np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)


def test_single_row_dot_has_two_rows(monkeypatch):
    """The property the padding exists for: the compiled dot's left operand has 2 rows."""
    x, w = jnp.ones((1, 1, 24)), jnp.ones((24, 40))
    monkeypatch.setattr(layers, "SINGLE_ROW_DOTS", "pad")
    padded = jax.jit(lambda a, b: layers.project(a, b)).lower(x, w).as_text()
    monkeypatch.setattr(layers, "SINGLE_ROW_DOTS", "plain")
    plain = jax.jit(lambda a, b: layers.project(a, b)).lower(x, w).as_text()
    assert "1x2x24" in padded and "1x2x24" not in plain
