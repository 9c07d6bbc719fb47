"""The metrics on a real speculative loop's output (tiny random models, CPU).

Checks that the loop's counters satisfy the identities RunStats validates, that greedy
output is exact against autoregressive decoding, and that a summary comes out whole. This is
the one eval test that compiles a decoder (~10 s on two cores).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import specjax
from specjax.eval import metrics as M

try:  # tiny random models come from the shared test setup of the decoding tests
    from support import TINY_LLAMA, random_model
except ImportError:
    pytest.skip("tests/conftest.py has no tiny random models", allow_module_level=True)
if not hasattr(specjax, "generate"):
    pytest.skip("specjax.generate is not available", allow_module_level=True)

PROMPTS = [[5, 17, 3, 42, 8], [9, 1], [33, 12, 60, 7, 7, 7, 19, 4, 2, 50, 21]]


def test_metrics_on_speculative_loop():
    target = random_model(TINY_LLAMA, seed=10)
    model, params = target
    # A perturbed copy of the target: frequent but imperfect acceptance.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(99), len(leaves))
    noisy = [
        x + 0.05 * jnp.std(x) * jax.random.normal(k, x.shape)
        for x, k in zip(leaves, keys, strict=True)
    ]
    draft = (model, jax.tree.unflatten(treedef, noisy))

    ar, t_ar = M.timed(
        lambda: specjax.generate(target, None, PROMPTS, max_new_tokens=20), repeats=1
    )
    out, t_sp = M.timed(
        lambda: specjax.generate(target, draft, PROMPTS, gamma=4, max_new_tokens=20), repeats=1
    )
    stats = M.RunStats.from_output(out)  # validates the counters' identities
    exact = M.check_exact(out.tokens, ar.tokens, out.num_generated, ar.num_generated)
    assert exact.all_equal, exact.to_dict()

    s = M.summarize(stats, spec_timing=t_sp, ar_timing=t_ar, exact=exact, c=1.0)
    assert s.exact is True and s.gamma == 4 and s.batch_size == 3
    assert s.tau == pytest.approx(out.tau, rel=1e-6)
    np.testing.assert_allclose(s.alpha_per_position, out.acceptance_per_position, rtol=1e-6)
    assert sum(s.accept_hist) == s.verify_calls
    assert s.alpha == pytest.approx(s.alpha_mle)  # every call drafts gamma tokens
    assert s.spec_seconds > 0 and s.spec_compile_seconds > 0 and np.isfinite(s.speedup)
