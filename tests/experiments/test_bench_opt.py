"""experiments/bench_opt.py's choice of the final setting and its table (no subprocesses)."""

from experiments import bench_opt


def _row(variant, ar_ms, exact=False, error=None):
    flags, dtype = bench_opt.VARIANTS[variant]
    row = {"variant": variant, "xla_flags": flags, "dtype": dtype}
    if error:
        return {**row, "error": error}
    return {**row, "ar_ms_per_token": ar_ms, "ar_compile_s": 5.0, "drafter": "ngram:gamma=8",
            "spec_ms_per_token": ar_ms / 1.5, "tau": 1.7, "speedup": 1.5, "exact": exact,
            "spec_compile_s": 4.0}  # fmt: skip


def test_pick_best_is_the_fastest_bf16_setting_that_ran():
    rows = [
        _row("float32", 1.0),  # fastest, but the float32 "before" row never wins
        _row("baseline", 1.66),
        _row("no_graphs", 1.60),
        _row("graph_loops", 0.5, error="exit 1: crash"),
    ]
    assert bench_opt.pick_best(rows) == "no_graphs"  # bf16 inexactness does not disqualify
    assert bench_opt.pick_best([_row("float32", 1.0)]) is None


def test_markdown_shows_gain_over_baseline_and_failures():
    table = bench_opt.markdown(
        [_row("baseline", 2.0), _row("no_graphs", 1.0), _row("graph_loops", 0, error="a|b\nc")]
    )
    lines = table.splitlines()
    assert len(lines) == 5
    assert "| no_graphs | bfloat16 |" in lines[3] and "2.00×" in lines[3]
    assert "failed: a/b c" in lines[4]
