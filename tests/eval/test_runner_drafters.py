"""The experiment runner with every drafter kind: a tiny sweep over drafters (random target,
synthetic prompts, freshly initialised heads), its files and report, and the config errors
that must fail before anything is loaded."""

from __future__ import annotations

import json

import pytest

from specjax import experiment
from specjax.drafters import registry
from specjax.drafters.heads import init_heads, save_heads
from specjax.eval import metrics
from specjax.experiment import pairs

# One point per drafter kind, and the decoding options (adaptive gamma, a token tree; a
# dynamic tree takes the same path through the runner). Heads folders: see the fixture.
POINTS = [
    {"drafter.kind": "ngram", "gamma": 3},
    {"drafter.kind": "ngram", "gamma": 3, "adaptive_gamma": True},
    {"drafter.kind": "early-exit", "drafter.exit_layer": 1},
    {"drafter.kind": "early-exit", "tree": "2,1"},
    {"drafter.kind": "eagle", "drafter.heads": "eagle"},
    {"drafter.kind": "medusa", "drafter.heads": "medusa"},
]
LABELS = [
    "random:tiny / ngram(n<=3)",
    "random:tiny / ngram(n<=3), adaptive γ",
    "random:tiny / early-exit(layer 1)",
    "random:tiny / early-exit(layer 1), tree 2,1",
    "random:tiny / eagle(eagle)",
    "random:tiny / medusa(medusa)",
]


def _base(**overrides):
    """random:tiny (2 layers, vocabulary 128), 2 synthetic prompts (one per category,
    batch 1), 8 new tokens, greedy: every decoder compiles once and runs in milliseconds."""
    config = experiment.base_config()
    config.target = "random:tiny"
    config.drafter.kind = "ngram"
    config.gamma = 2
    config.batch_size = 1
    config.prompts.name = experiment.SYNTHETIC
    config.prompts.subset = 2
    config.max_new_tokens = 8
    config.stop_at_eos = False
    config.dtype = "float32"
    config.repeats = 1
    return experiment.finalize(config, overrides)


@pytest.fixture(scope="module")
def heads_dir(tmp_path_factory):
    """Untrained EAGLE and Medusa (2 heads) heads for random:tiny, saved as training saves."""
    folder = tmp_path_factory.mktemp("heads")
    target = pairs.load_model("random:tiny", "float32", 0)
    save_heads(folder / "eagle", *init_heads("eagle", *target.pair))
    save_heads(folder / "medusa", *init_heads("medusa", *target.pair, num_heads=2))
    return folder


@pytest.fixture(scope="module")
def drafter_sweep(heads_dir, tmp_path_factory):
    points = [
        {k: str(heads_dir / v) if k == "drafter.heads" else v for k, v in p.items()} for p in POINTS
    ]
    workdir = tmp_path_factory.mktemp("drafter_sweep")

    def run_without_plots(config, point_dir, **kwargs):  # the sweep's own plots suffice
        return experiment.run_experiment(config, point_dir, **{**kwargs, "plots": False})

    result = experiment.run_sweep(
        _base(),
        points,
        workdir,
        progress=False,
        command="pytest drafters",
        run_fn=run_without_plots,
    )
    return workdir, result, points


def test_every_drafter_kind_runs_exactly(drafter_sweep):
    workdir, result, points = drafter_sweep
    assert len(result.runs) == len(points) and len(set(result.computed)) == len(points)
    overall = {r.overall.label: r.overall for r in result.runs}
    assert sorted(overall) == sorted(LABELS)  # every run is named by its drafter
    for s in overall.values():
        assert s.exact is True, s.label  # greedy, float32: speculative == autoregressive
        assert 1.0 <= s.tau <= s.gamma + 1 and s.tokens_generated == 2 * 8
        assert len(s.alpha_per_position) == s.gamma
    by_label = dict(zip(LABELS, (overall[label] for label in LABELS), strict=True))
    ngram, adaptive, early, tree, eagle, medusa = by_label.values()
    # The summary names the drafter by its registry spec, as resolved (exit layer 0 -> 1).
    assert ngram.drafter == "ngram" and adaptive.drafter == "ngram:adaptive=1"
    assert adaptive.extra["adaptive_gamma"] is True and ngram.extra["draft"] is None
    assert early.drafter == "early-exit:exit_layer=1" and early.extra["draft"] == "early-exit:1"
    assert tree.drafter == "early-exit:exit_layer=1,tree=2,1" and tree.gamma == 2  # the depth
    for s in (ngram, adaptive, early, tree, eagle, medusa):
        assert registry.parse_spec(s.drafter).text() == s.drafter  # spec text reads back
    assert eagle.drafter.startswith("eagle:") and medusa.extra["drafter_kind"] == "medusa"
    # c: measured for the n-gram lookup and the early-exit model, not for heads.
    assert 0 < ngram.c < 1 and early.c > 0 and tree.extra["verify_cost"] > 0
    assert eagle.c != eagle.c and medusa.c != medusa.c  # NaN: no prediction
    for name in result.computed:
        point = workdir / "points" / name
        for f in ("config.json", "metrics.jsonl", "generations.jsonl", "summary.json"):
            assert (point / f).is_file(), (name, f)
    tree_point = workdir / "points" / experiment.point_name(points[3])
    stored = json.loads((tree_point / "config.json").read_text())
    assert stored["tree"] == "2,1" and stored["drafter"]["kind"] == "early-exit"


def test_drafter_sweep_report_has_a_row_per_drafter(drafter_sweep):
    workdir, _, _ = drafter_sweep
    text = (workdir / "report.md").read_text()
    assert text.startswith("## Speculative decoding: random:tiny, 6 drafters")
    rows = metrics.read_jsonl(workdir / "metrics.jsonl")
    assert len(rows) == 6 * 3  # short, long, all per drafter
    lines = text.splitlines()
    for label in LABELS:
        # The main table, the per-category table (a column per category) and alpha per
        # position: one row each.
        assert sum(line.startswith(f"| {label} |") for line in lines) == 3, label
    assert "| pair | γ | short | long |" in text
    for plot in ("speedup_by_drafter", "alpha_per_position", "predicted_vs_measured"):
        assert (workdir / "plots" / f"{plot}.png").stat().st_size > 1000, plot
        assert f"](plots/{plot}.png)" in text


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"drafter.kind": "ngram", "tree": "2,1"}, "drafter.kind must be one of ('model', 'early"),
        ({"drafter.kind": "early-exit", "tree": "2,x"}, "tree: bad tree '2,x'"),
        ({"drafter.kind": "early-exit", "tree": "dynamic:depth=2"}, "lacks num_nodes, top_k"),
        (
            {"drafter.kind": "early-exit", "tree": "2,1", "adaptive_gamma": True},
            "adaptive_gamma and tree exclude each other",
        ),
        ({"drafter.kind": "eagle"}, "needs drafter.heads=<folder of saved heads>"),
        ({"drafter.kind": "eagle", "drafter.heads": "/no/such/heads"}, "configs/train_eagle"),
        ({"drafter.kind": "medusa", "drafter.heads": "/no/such"}, "configs/train_medusa_smollm"),
        ({"drafter.kind": "lookahead"}, "drafter.kind: unknown drafter kind 'lookahead'"),
        ({"drafter.kind": "early-exit", "drafter.exit_layer": -1}, "exit_layer must be >= 0"),
        ({"drafter.ngram_n": 0}, "ngram needs 1 <= ngram_min <= ngram_n"),
        ({"adaptive_gamma": "maybe"}, "expected a value of type bool"),
    ],
)
def test_bad_drafter_settings_fail_validation(overrides, message):
    with pytest.raises(experiment.ConfigError) as error:
        _base(**overrides)
    assert message in str(error.value)


def test_heads_of_the_wrong_kind_or_too_few_fail_validation(heads_dir):
    with pytest.raises(experiment.ConfigError, match="holds medusa heads, not eagle"):
        _base(**{"drafter.kind": "eagle", "drafter.heads": str(heads_dir / "medusa")})
    with pytest.raises(experiment.ConfigError, match="2 Medusa heads: gamma must be <= 2"):
        _base(**{"drafter.kind": "medusa", "drafter.heads": str(heads_dir / "medusa"), "gamma": 3})


def test_a_bad_sweep_point_fails_before_anything_runs(tmp_path):
    points = [{"drafter.kind": "ngram"}, {"drafter.kind": "eagle", "drafter.heads": "/no/heads"}]
    with pytest.raises(experiment.ConfigError, match="sweep point drafter.kind=eagle"):
        experiment.run_sweep(_base(), points, tmp_path, progress=False)
    assert not (tmp_path / "points").exists()


def test_older_runs_stay_complete_when_the_schema_grows(tmp_path):
    """A run written before adaptive_gamma / tree existed is complete for a config that
    leaves them at their defaults (a resumed sweep must not redo it), not for one that
    sets them."""
    config = _base()
    stored = json.loads(experiment.config.config_json(config))
    del stored["adaptive_gamma"], stored["tree"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    (tmp_path / experiment.SUMMARY_FILE).write_text(json.dumps({"complete": True}))
    assert experiment.is_complete(tmp_path, config)
    assert not experiment.is_complete(tmp_path, _base(adaptive_gamma=True))
