"""The plot helpers write PNG files from plain records, headless."""

import math

import numpy as np

from specjax.eval import cost_model
from specjax.eval.metrics import RunSummary
from specjax.experiment import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def records():
    out = []
    for category, alpha in (("coding", 0.9), ("math", 0.75)):
        for gamma in (1, 2, 4, 8):
            pred = float(cost_model.predicted_speedup(alpha, gamma, 0.1))
            out.append(
                RunSummary(
                    label="qwen 1.5b/0.5b",
                    category=category,
                    gamma=gamma,
                    alpha=alpha,
                    c=0.1,
                    speedup=0.8 * pred,
                    alpha_per_position=[alpha] * gamma,
                )
            )
    return out


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5_000


def test_plots_write_png(tmp_path):
    recs = records()
    fig = plots.plot_speedup_vs_gamma(recs, tmp_path / "a" / "speedup.png")
    check_png(tmp_path / "a" / "speedup.png")
    # one measured and one predicted line per (pair, category)
    assert len(fig.axes[0].get_lines()) == 2 * 2 + 1
    plots.plot_alpha_per_position(recs, tmp_path / "alpha.png")
    check_png(tmp_path / "alpha.png")
    plots.plot_alpha_per_position({"draft": [0.8, 0.7, math.nan]}, tmp_path / "alpha2.png")
    check_png(tmp_path / "alpha2.png")
    dicts = [r.to_dict() for r in recs]  # records read back from metrics.jsonl work too
    plots.plot_predicted_vs_measured(dicts, tmp_path / "pvm.png")
    check_png(tmp_path / "pvm.png")


def test_accept_histogram_plot(tmp_path):
    recs = [r.to_dict() | {"accept_hist": [3, 2, 1, 0, 4][: r.gamma + 1]} for r in records()]
    plots.plot_accept_histogram(recs, tmp_path / "h.png")
    check_png(tmp_path / "h.png")
    plots.plot_accept_histogram({"a": [1, 2, 3], "b": [0, 0, 0]}, tmp_path / "h2.png")
    check_png(tmp_path / "h2.png")


def test_tau_vs_call_cost_plot(tmp_path):
    """Lines of equal speedup pass through the points that have that speedup: a drafter
    with τ = 3 at 2 ms a call over a 1 ms step is 1.5x, on the 1.5x line."""
    fig = plots.plot_tau_vs_call_cost(
        {"chain": (2.0, 3.0), "tree": (3.0, 3.5)}, 1.0, tmp_path / "t.png", speedups=(1.5, 2.0)
    )
    check_png(tmp_path / "t.png")
    lines = fig.axes[0].get_lines()
    one_and_half = lines[0]
    xs, ys = one_and_half.get_data()
    assert math.isclose(float(np.interp(2.0, xs, ys)), 3.0, rel_tol=1e-9)
    assert math.isclose(float(np.interp(2.0, *lines[1].get_data())), 4.0, rel_tol=1e-9)


def test_call_parts_plot_stacks_each_runs_parts(tmp_path):
    """Each run's bar is its parts end to end in the given order: the segments' widths are
    the ms given and the bar ends at their sum. Profile results give the parts by order when
    they have them, else by name with unnamed kernels as outside."""
    from specjax.bench import profile

    def result(label, split):
        return {"label": label, "sections": {"spec": split}}

    by_name = {"per_call_ms": {"draft": 0.4, "verify": 1.4, "accept": 0.01, "commit": 0.09,
                               "unscoped": 0.0}, "other_ms_per_call": 0.6}  # fmt: skip
    timeline = {"per_call_ms": {**by_name["per_call_ms"], "draft": 0.5},
                "outside_ms_per_call": 0.07}  # fmt: skip
    runs = profile.call_parts(
        [result("a", {"phases": by_name}), result("b", {"phases": by_name,
                                                         "phase_timeline": timeline})]
    )  # fmt: skip
    assert runs["a"]["outside"] == 0.6 and runs["a"]["draft"] == 0.4
    assert runs["b"]["outside"] == 0.07 and runs["b"]["draft"] == 0.5
    fig = plots.plot_call_parts(runs, tmp_path / "parts.png")
    check_png(tmp_path / "parts.png")
    bars = fig.axes[0].patches
    assert len(bars) == 2 * 6  # two runs, six parts each
    for run, index in (("a", 0), ("b", 1)):
        mine = bars[index::2]  # one container per part, runs in order within it
        assert [round(b.get_width(), 9) for b in mine] == [round(v, 9) for v in runs[run].values()]
        assert math.isclose(mine[-1].get_x() + mine[-1].get_width(), sum(runs[run].values()))
