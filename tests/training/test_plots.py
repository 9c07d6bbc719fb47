"""Training plots and the comparison table: which metrics are drawn, and what the table shows.
Plain records, no model: these run in milliseconds."""

from specjax.training import experiment, plots


def test_top1_keys_by_draft_position():
    eagle = {"eval_top1": 0.3, "eval_top1_3": 0.1, "eval_top1_2": 0.2, "top1": 0.4, "eval_loss": 1}
    assert plots.top1_keys(eagle) == ["eval_top1", "eval_top1_2", "eval_top1_3"]
    # Medusa's eval_top1 repeats its head 1.
    medusa = {"eval_top1": 0.3, "eval_top1_1": 0.3, "eval_top1_2": 0.2, "eval_top1_10": 0.0}
    assert plots.top1_keys(medusa) == ["eval_top1_1", "eval_top1_2", "eval_top1_10"]


def test_plots_draw_every_run_and_position(tmp_path):
    records = [
        {"step": s, "loss": 1 / s, "eval_loss": 2 / s, "eval_top1": 0.1 * s, "eval_top1_2": 0.05}
        for s in (1, 2, 3)
    ]
    fig = plots.plot_training({"eagle": records, "medusa": records}, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
    loss_axes, top1_axes = fig.axes[0::2], fig.axes[1::2]
    assert len(fig.axes) == 4
    assert [len(ax.lines) for ax in loss_axes] == [2, 2]  # training and held-out
    assert [len(ax.lines) for ax in top1_axes] == [2, 2]  # positions 1 and 2

    rows = [
        {"drafter": "eagle", "gamma": 3, "tau": 1.5, "alpha": [0.4, 0.3, None], "speedup": 1.2},
        {"drafter": "ngram", "gamma": 3, "tau": 1.8, "alpha": [0.3, 0.7, 0.8], "speedup": 1.6},
    ]
    fig = plots.plot_comparison(rows, tmp_path / "c.png")
    tau_axis, alpha_axis = fig.axes
    assert len(tau_axis.patches) == 2 and len(alpha_axis.lines) == 2
    assert "(1.60x)" in " ".join(t.get_text() for t in tau_axis.texts)


def test_markdown_shows_speedup_only_when_every_row_was_timed():
    row = {
        "drafter": "eagle (trained, 4 steps)", "gamma": 2, "tau": 1.5, "alpha_1": 0.5,
        "alpha": [0.5, 0.25], "target_calls": 8, "tokens": 12, "exact": True,
    }  # fmt: skip
    assert "speedup" not in experiment.markdown([row])
    table = experiment.markdown([{**row, "speedup": 1.25}])
    assert table.splitlines()[0].endswith("| speedup |")
    assert table.splitlines()[2] == (
        "| eagle (trained, 4 steps) | 2 | 1.5 | 0.5 | 0.50 0.25 | 8 | 12 | True | 1.25 |"
    )
