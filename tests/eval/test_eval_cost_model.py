"""The Leviathan et al. (2022) cost model against its closed forms, and the alpha estimators."""

import time

import numpy as np
import pytest

from specjax.eval import cost_model as C


def closed_form(alpha: float, gamma: int) -> float:
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def test_expected_tokens_closed_form():
    # alpha = 0.8, gamma = 4: (1 - 0.8^5) / 0.2 = (1 - 0.32768) / 0.2 = 3.3616
    assert C.expected_tokens(0.8, 4) == pytest.approx(3.3616, abs=1e-12)
    assert C.predicted_speedup(0.8, 4, c=0.0) == pytest.approx(3.3616, abs=1e-12)
    for a in (0.0, 0.1, 0.5, 0.9, 0.999):
        for g in (0, 1, 3, 8):
            assert C.expected_tokens(a, g) == pytest.approx(closed_form(a, g), rel=1e-12)
    assert C.expected_tokens(1.0, 4) == 5.0  # the alpha -> 1 limit, gamma + 1
    assert C.expected_tokens(0.0, 4) == 1.0
    np.testing.assert_allclose(C.expected_tokens([0.5, 1.0], 2), [1.75, 3.0])
    with pytest.raises(ValueError):
        C.expected_tokens(1.2, 3)


def test_predicted_speedup_with_draft_cost():
    # alpha = 0.8, gamma = 4, c = 0.05: 3.3616 / (4 * 0.05 + 1) = 2.80133...
    assert C.predicted_speedup(0.8, 4, c=0.05) == pytest.approx(3.3616 / 1.2)
    # The generalised verification cost enters the denominator.
    assert C.predicted_speedup(0.8, 4, c=0.05, verify_cost=1.5) == pytest.approx(3.3616 / 1.7)
    # gamma = 0 is plain autoregressive decoding: speedup 1 whatever alpha and c.
    assert C.predicted_speedup(0.3, 0, c=0.5) == 1.0


def test_best_gamma():
    # alpha = 0.8, c = 0.05, by hand: E(g)/(1 + 0.05 g) for g = 1..9 is
    # 1.714, 2.218, 2.567, 2.801, 2.951, 3.040, 3.082, 3.092, 3.078 -> best gamma 8.
    g, s = C.best_gamma(0.8, 0.05, max_gamma=16)
    assert g == 8 and s == pytest.approx(4.32891136 / 1.4)
    assert C.best_gamma(0.8, 0.05, max_gamma=5) == (5, pytest.approx(3.68928 / 1.25))
    # A perfect, free draft: speculate as far as allowed.
    assert C.best_gamma(1.0, 0.0, max_gamma=7)[0] == 7
    # Useless draft: every gamma >= 1 loses; with min_gamma=0, don't speculate.
    g, s = C.best_gamma(0.1, 0.5, max_gamma=8)
    assert g == 1 and s < 1
    assert C.best_gamma(0.1, 0.5, max_gamma=8, min_gamma=0) == (0, 1.0)
    # Ties go to the smaller gamma (alpha = 0, c = 0: all equal 1).
    assert C.best_gamma(0.0, 0.0, max_gamma=4)[0] == 1


def sample_lengths(rng: np.random.Generator, alpha: float, gamma: int, n: int) -> np.ndarray:
    """Accepted lengths of n verification calls: leading successes of gamma Bernoulli(alpha)."""
    ok = rng.random((n, gamma)) < alpha
    return np.cumprod(ok, axis=1).sum(axis=1)


@pytest.mark.parametrize("alpha, gamma", [(0.7, 4), (0.9, 8), (0.3, 2)])
def test_mle_recovers_alpha(alpha, gamma):
    n = 20_000
    k = sample_lengths(np.random.default_rng(1234), alpha, gamma, n)
    est = C.alpha_mle(k, gamma)
    # Tolerance: 5 asymptotic standard errors. SE = sqrt(a (1-a)^2 / (n (1 - a^gamma))), e.g.
    # 0.0020 for (0.7, 4) with n = 20,000, so |error| < 0.010; a correct estimator fails this
    # with probability ~6e-7 (and the seed is fixed).
    se = C.alpha_mle_stderr(alpha, gamma, n)
    assert se < 0.01
    assert abs(est - alpha) < 5 * se

    # The histogram form and the pooled per-position estimate give the same number.
    hist = np.bincount(k, minlength=gamma + 1)
    assert C.alpha_mle(histogram=hist) == pytest.approx(est, rel=1e-12)
    app = np.array([[(k > i).sum() for i in range(gamma)]])
    assert C.alpha_pooled(app, [n]) == pytest.approx(est, rel=1e-12)
    # accepted / drafted understates alpha: unexamined positions count as failures.
    assert k.sum() / (n * gamma) < est - 0.02


def test_mle_edge_cases():
    assert C.alpha_mle([4, 4, 4], 4) == 1.0  # never rejected: the boundary
    assert C.alpha_mle([0, 0], 4) == 0.0
    assert C.alpha_mle([[2, -1], [0, -1]], 4) == pytest.approx(2 / 4)  # -1 padding ignored
    assert np.isnan(C.alpha_mle(np.array([], dtype=int), 4))
    with pytest.raises(ValueError):
        C.alpha_mle([5], 4)
    with pytest.raises(ValueError):
        C.alpha_mle([1], 4, histogram=[1, 0, 0, 0, 0])


def test_alpha_from_tau_inverts_expected_tokens():
    for a in (0.2, 0.6, 0.85):
        assert C.alpha_from_tau(C.expected_tokens(a, 5), 5) == pytest.approx(a, abs=1e-9)
    assert C.alpha_from_tau(1.0, 4) == 0.0 and C.alpha_from_tau(5.0, 4) == 1.0


def test_measure_c_times_steady_state():
    state = {"draft": 0}

    def draft():
        state["draft"] += 1
        time.sleep(0.2 if state["draft"] == 1 else 0.002)  # first call "compiles"
        return np.zeros(1)

    def target():
        time.sleep(0.02)
        return np.zeros(1)

    m = C.measure_c(draft, target, warmup=2, repeats=5)
    assert state["draft"] == 2 + 5
    assert len(m.draft.times_s) == 5 and m.draft.first_s >= 0.2
    # Sleeps overshoot by scheduler noise; the compile call must not leak into the median.
    assert 0.03 < m.c < 0.4
    assert set(m.to_dict()) >= {"c", "draft_s", "target_s"}
    with pytest.raises(ValueError):
        C.measure_c(draft, target, warmup=0)


def test_predicted_vs_measured_table():
    rows = [
        {"label": "pair", "gamma": 4, "alpha": 0.8, "c": 0.05, "speedup": 2.5, "tau": 3.2},
        {"label": "pair", "gamma": 2, "alpha": 0.8, "c": 0.05, "speedup": 2.0},
    ]
    out = C.predicted_vs_measured(rows)
    assert out[0]["predicted_speedup"] == pytest.approx(3.3616 / 1.2)
    assert out[0]["ratio"] == pytest.approx(2.5 / (3.3616 / 1.2))
    assert out[0]["tau_minus_E"] == pytest.approx(3.2 - 3.3616)
    assert "tau_minus_E" not in out[1]
    table = C.format_table(out, ["label", "gamma", "predicted_speedup", "speedup"])
    lines = table.splitlines()
    assert lines[0] == "| label | gamma | predicted_speedup | speedup |"
    assert lines[2] == "| pair | 4 | 2.801 | 2.500 |"
    s = C.cost_summary(0.8, 4, 0.05)
    assert s["best_gamma"] == 8 and s["expected_tokens"] == pytest.approx(3.3616)
