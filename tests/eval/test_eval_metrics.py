"""Metric arithmetic against hand-computed cases."""

import json
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

from specjax.eval import cost_model
from specjax.eval import metrics as M
from specjax.eval.timing import Timer, Timing, profile_calls, timed


def one_row() -> M.RunStats:
    # gamma = 4; three verification calls accepting 4, 2 and 0 draft tokens.
    # Position i is accepted on calls whose length > i: pos0 -> calls 1,2; pos1 -> 1,2;
    # pos2 -> 1; pos3 -> 1.
    return M.RunStats(
        verify_calls=[3],
        accepted=[6],
        drafted=[12],
        accepted_per_position=[[2, 2, 1, 1]],
        num_generated=[9],
        accept_lengths=[[4, 2, 0, -1, -1]],
    )


def two_rows() -> M.RunStats:
    # Row 0 as above; row 1: two calls accepting 1 and 1 -> positions [2, 0, 0, 0].
    return M.RunStats(
        verify_calls=[3, 2],
        accepted=[6, 2],
        drafted=[12, 8],
        accepted_per_position=[[2, 2, 1, 1], [2, 0, 0, 0]],
        num_generated=[9, 4],
        accept_lengths=[[4, 2, 0], [1, 1, -1]],
    )


def test_single_row_by_hand():
    s = one_row()
    assert s.gamma == 4
    assert M.acceptance_tau(accepted=s.accepted, verify_calls=s.verify_calls) == 3.0  # (6+3)/3
    # Emitted: 9 tokens, the first from the prefill; the budget cut one of the last call's.
    assert M.tau(num_generated=s.num_generated, verify_calls=s.verify_calls) == pytest.approx(8 / 3)
    np.testing.assert_array_equal(
        M.reached_per_position(s.accepted_per_position, [3]), [3, 2, 2, 1]
    )
    np.testing.assert_allclose(
        M.alpha_per_position(s.accepted_per_position, s.verify_calls), [2 / 3, 1.0, 0.5, 1.0]
    )
    assert M.alpha_overall(s.accepted_per_position, s.verify_calls) == pytest.approx(6 / 8)
    assert M.alpha_overall(s.accepted_per_position, s.verify_calls) == pytest.approx(
        cost_model.alpha_pooled(s.accepted_per_position, s.verify_calls)
    )
    assert M.acceptance_rate(s.accepted, s.drafted) == 0.5  # 6 / 12: not alpha
    np.testing.assert_array_equal(M.accept_length_histogram(s.accept_lengths, 4), [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(
        M.histogram_from_positions(s.accepted_per_position, s.verify_calls), [1, 0, 1, 0, 1]
    )


def test_two_rows_pooled_and_per_row():
    s = two_rows()
    assert M.acceptance_tau(accepted=s.accepted, verify_calls=s.verify_calls) == pytest.approx(
        (8 + 5) / 5
    )  # 2.6
    # Emitted per call: (9 - 1) + (4 - 1) tokens over 5 calls (each row's first: the prefill).
    assert M.tau(num_generated=s.num_generated, verify_calls=s.verify_calls) == pytest.approx(2.2)
    np.testing.assert_allclose(
        M.tau_per_row(num_generated=s.num_generated, verify_calls=s.verify_calls), [8 / 3, 1.5]
    )
    # reached: pos0 = 5 calls, pos1 = accepted_at[0] = 4, pos2 = 2, pos3 = 1;
    # accepted_at pooled = [4, 2, 1, 1].
    np.testing.assert_array_equal(
        M.reached_per_position(s.accepted_per_position, [3, 2]), [5, 4, 2, 1]
    )
    np.testing.assert_allclose(
        M.alpha_per_position(s.accepted_per_position, s.verify_calls), [0.8, 0.5, 0.5, 1.0]
    )
    assert M.alpha_overall(s.accepted_per_position, s.verify_calls) == pytest.approx(8 / 12)
    np.testing.assert_array_equal(M.accept_length_histogram(s.accept_lengths, 4), [1, 2, 1, 0, 1])


def test_histogram_from_positions_matches_per_step_data():
    rng = np.random.default_rng(0)
    gamma, b, steps = 5, 6, 40
    lengths = np.minimum(rng.geometric(0.35, size=(b, steps)) - 1, gamma)
    lengths[:, 30:] = -1  # rows stopped early: padded buffer
    app = np.stack([(lengths > i).sum(axis=1) for i in range(gamma)], axis=1)
    s = M.RunStats(
        verify_calls=(lengths >= 0).sum(1),
        accepted=np.where(lengths >= 0, lengths, 0).sum(1),
        drafted=(lengths >= 0).sum(1) * gamma,
        accepted_per_position=app,
        num_generated=np.zeros(b),
        accept_lengths=lengths,
    )
    np.testing.assert_array_equal(
        M.histogram_from_positions(s.accepted_per_position, s.verify_calls),
        M.accept_length_histogram(s.accept_lengths, gamma),
    )


def test_rows_without_calls_and_empty_runs():
    assert math.isnan(M.tau(num_generated=[1], verify_calls=[0]))
    assert math.isnan(M.acceptance_tau(accepted=[0], verify_calls=[0]))
    per_row = M.tau_per_row(num_generated=[6, 1], verify_calls=[2, 0])
    assert per_row[0] == 2.5 and math.isnan(per_row[1])
    alpha = M.alpha_per_position([[1, 0, 0]], [1])
    assert alpha[0] == 1.0 and alpha[1] == 0.0 and math.isnan(alpha[2])  # pos 2 never reached


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(accepted=[5]), "summed over positions"),
        (dict(accepted_per_position=[[2, 1, 2, 1]], accepted=[6]), "non-increasing"),
        (dict(accepted_per_position=[[4, 2, 0, 0]], accepted=[6]), "non-increasing"),
        (dict(drafted=[5]), "exceeds drafted"),
        (dict(accept_lengths=[[4, 2, -1]]), "one entry >= 0 per verify call"),
        (dict(num_generated=[1, 2]), "shape"),
        (dict(rejected_per_position=[[1, 0, 0]]), "rejected_per_position must be"),
        # Position 1 was eligible twice (position 0 accepted twice) and accepted twice.
        (dict(rejected_per_position=[[1, 1, 0, 0]]), "exceeds the calls that reached it"),
        (dict(rejected_per_position=[[-1, 0, 0, 0]]), "negative"),
    ],
)
def test_validation_catches_broken_counters(change, message):
    base = dict(
        verify_calls=[3],
        accepted=[6],
        drafted=[12],
        accepted_per_position=[[2, 2, 1, 1]],
        num_generated=[9],
    )
    with pytest.raises(ValueError, match=message):
        M.RunStats(**{**base, **change})


def test_alpha_with_the_loops_rejection_counts():
    """one_row()'s calls accepted 4, 2 and 0 of a gamma-4 draft. With the loop's rejection
    counts, a call that stopped at the end of what was drafted rejected nothing: here the
    second call drafted 2 tokens only (an adaptive draft, a tree's leaf), so position 2 was
    reached once (the first call), not twice, and its alpha is 1, not 1/2."""
    s = one_row()
    s.rejected_per_position = np.array([[1, 0, 0, 0]])  # the third call, at position 0
    s.validate()
    np.testing.assert_array_equal(
        M.reached_per_position(s.accepted_per_position, [3], s.rejected_per_position),
        [3, 2, 1, 1],
    )
    np.testing.assert_allclose(
        M.alpha_per_position(s.accepted_per_position, [3], s.rejected_per_position),
        [2 / 3, 1.0, 1.0, 1.0],
    )
    assert M.alpha_overall(s.accepted_per_position, [3], s.rejected_per_position) == pytest.approx(
        6 / 7
    )
    summary = M.summarize(s, spec_timing=1.0, ar_timing=2.0, meta={})
    assert summary.alpha_per_position == pytest.approx([2 / 3, 1.0, 1.0, 1.0])
    # Rows keep their counts through take and concat; a part without them drops them.
    both = M.RunStats.concat([s, s.take([0])])
    assert both.rejected_per_position.tolist() == [[1, 0, 0, 0]] * 2
    assert M.RunStats.concat([s, one_row()]).rejected_per_position is None


def test_take_concat_by_category():
    s = two_rows()
    parts = s.by_category(["a", "b"])
    assert list(parts) == ["a", "b"]
    assert parts["b"].accepted.tolist() == [2]
    both = M.RunStats.concat([parts["a"], parts["b"]])
    np.testing.assert_array_equal(both.accepted_per_position, s.accepted_per_position)
    np.testing.assert_array_equal(both.accept_lengths, s.accept_lengths)


def test_from_output_duck_typed():
    out = SimpleNamespace(
        stats=SimpleNamespace(
            verify_calls=np.array([3]),
            drafted=np.array([12]),
            accepted=np.array([6]),
            accepted_per_position=np.array([[2, 2, 1, 1]]),
        ),
        num_generated=np.array([10]),
    )
    s = M.RunStats.from_output(out)
    assert s.accept_lengths is None and s.num_generated.tolist() == [10]


def test_speed_numbers():
    assert M.tokens_per_second([100, 60], 2.0) == 80.0
    assert M.speedup(ar_seconds=3.0, spec_seconds=1.5) == 2.0


def test_check_exact():
    ar = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [7, 7, 7, 0, 0]])
    spec = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 9, 5], [7, 7, 7, 0, 0]])
    r = M.check_exact(spec, ar)
    assert r.equal.tolist() == [True, False, True]
    assert r.first_mismatch.tolist() == [-1, 3, -1]
    assert not r.all_equal and r.num_mismatched == 1 and not bool(r)
    # Valid lengths: padding after the end is ignored, a shorter row mismatches at its end.
    spec_pad = np.array([[1, 2, 3, 99], [5, 6, 0, 0]])
    ar_pad = np.array([[1, 2, 3, 42], [5, 6, 8, 0]])
    r = M.check_exact(spec_pad, ar_pad, spec_lengths=[3, 2], ar_lengths=[3, 3])
    assert r.first_mismatch.tolist() == [-1, 2]
    # Ragged lists.
    r = M.check_exact([[1, 2], [3]], [[1, 2], [3]])
    assert r.all_equal and r.to_dict()["first_mismatch"] == [-1, -1]


def test_timed_separates_first_call():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.06 if len(calls) == 1 else 0.01)  # the first call "compiles"
        return np.ones(3)

    out, t = timed(fn, repeats=3)
    assert len(calls) == 4 and len(t.times_s) == 3
    assert out.shape == (3,)
    assert t.first_s >= 0.06 and t.median_s < 0.05
    assert t.compile_s == pytest.approx(t.first_s - t.median_s)


def test_timer_blocks_on_jax_results():
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: jnp.tanh(x @ x))
    x = jnp.ones((64, 64))
    timer = Timer()
    for _ in range(3):
        y = timer(f, x)
    with timer.section() as sec:
        sec.wait(f(x))
    assert isinstance(y, jax.Array)
    t = timer.timing()
    assert len(t.times_s) == 3 and all(s > 0 for s in t.times_s)
    with pytest.raises(ValueError):
        Timer().timing()


def test_profile_calls_names_where_the_calls_spend_their_time():
    """One unprofiled call, then `calls` profiled ones: the called function appears with that
    many calls, and the lines are pstats' (sorted by the key asked for)."""
    seen = []

    def busy_helper():
        seen.append(sum(i * i for i in range(20_000)))

    lines = profile_calls(busy_helper, 7, sort="cumulative", top=10)
    assert len(seen) == 8  # the warm-up call and the 7 profiled ones
    helper = [line for line in lines if "busy_helper" in line]
    assert helper and helper[0].split()[0] == "7"  # ncalls
    assert any("Ordered by: cumulative time" in line for line in lines)


def test_summary_json_csv_roundtrip(tmp_path):
    s = M.summarize(
        two_rows(),
        spec_timing=Timing(first_s=5.0, times_s=[1.0, 1.2, 0.9]),
        ar_timing=2.6,
        exact=M.check_exact([[1]], [[1]]),
        c=0.05,
        label="pair",
        category="coding",
        max_new_tokens=64,
        run_id="abc",  # unknown keys land in extra
    )
    assert s.gamma == 4 and s.batch_size == 2 and s.tokens_generated == 13
    assert s.tau == pytest.approx(2.2) and s.acceptance_tau == pytest.approx(2.6)
    assert s.alpha == pytest.approx(2 / 3)
    assert s.alpha_mle == pytest.approx(2 / 3)  # equals the pooled estimate (full drafts)
    assert s.accept_hist == [1, 2, 1, 0, 1]
    assert s.spec_seconds == 1.0 and s.spec_compile_seconds == pytest.approx(4.0)
    assert s.speedup == pytest.approx(2.6) and s.tokens_per_s == pytest.approx(13.0)
    assert math.isnan(s.ar_compile_seconds) and s.exact is True
    expected = (1 - (2 / 3) ** 5) / (1 - 2 / 3) / (4 * 0.05 + 1)
    assert s.predicted_speedup == pytest.approx(expected)
    assert s.extra == {"run_id": "abc"}

    d = json.loads(s.to_json())  # strict JSON: nan became null
    assert d["ar_compile_seconds"] is None
    path = tmp_path / "m.jsonl"
    M.append_jsonl(s, path)
    M.append_jsonl(s, path)
    back = M.read_jsonl(path)
    assert len(back) == 2 and back[0].alpha_per_position == s.alpha_per_position
    assert math.isnan(back[0].ar_compile_seconds)

    text = M.write_csv([s, s], tmp_path / "r.csv")
    lines = text.splitlines()
    assert lines[0].startswith("label,drafter,prompt_set,category,gamma")
    assert len(lines) == 3 and (tmp_path / "r.csv").read_text() == text


def test_summarize_by_category():
    s = two_rows()
    out = M.summarize_by_category(
        s,
        ["math", "coding"],
        order=["coding", "math"],
        timings={"math": (1.0, 2.0)},
        spec_timing=3.0,
        ar_timing=6.0,
        label="pair",
    )
    assert [r.category for r in out] == ["coding", "math", "all"]
    coding, math_, total = out
    assert coding.acceptance_tau == 2.0 and math_.acceptance_tau == 3.0
    assert total.acceptance_tau == pytest.approx(2.6)
    assert (
        coding.tau == 1.5 and math_.tau == pytest.approx(8 / 3) and total.tau == pytest.approx(2.2)
    )
    assert math.isnan(coding.speedup) and math_.speedup == 2.0 and total.speedup == 2.0
    assert all(r.label == "pair" for r in out) and coding.num_prompts == 1


def test_alpha_of_an_unreached_position_is_nan_in_tables_and_0_in_the_output():
    """One definition, two conventions for a position never examined (here position 2: the
    only call rejected position 1)."""
    from specjax.decoding import state

    accepted, calls = [[0, 0]], [1]
    np.testing.assert_array_equal(M.alpha_per_position(accepted, calls), [0.0, np.nan])
    np.testing.assert_array_equal(
        state.acceptance_per_position(accepted_per_position=accepted, verify_calls=calls),
        [0.0, 0.0],
    )
