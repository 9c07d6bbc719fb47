"""The benchmark harness (specjax/bench/speedup.py) on tiny random models: drafter specs, the
batch-1 prompt-set timing (pooled statistics, one compilation), the real-model suite's
exactness bookkeeping, and the synthetic suite's rows. Timings are not asserted."""

import numpy as np
import pytest
from support import TINY_LLAMA, random_model

import specjax
from specjax import api
from specjax.bench import speedup
from specjax.decoding.tree import DynamicTreeSpec, TreeSpec
from specjax.drafters.heads import init_heads, save_heads
from specjax.drafters.ngram import NgramDrafter

PROMPTS = [[1, 2, 3, 1, 2, 3, 1, 2], [5, 6, 7, 8, 9], [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]]


@pytest.fixture(scope="module")
def target():
    return random_model(TINY_LLAMA, seed=0)


def test_parse_drafter_spec_kinds(target, tmp_path):
    spec = speedup.parse_drafter_spec("ngram:gamma=8,ngram_n=2,adaptive=1,name=pl", target)
    assert (spec.name, spec.gamma, spec.drafter.max_ngram) == ("pl", 8, 2)
    assert spec.generate_kwargs == {"adaptive_gamma": True}
    assert speedup.parse_drafter_spec("ngram", target).gamma == speedup.DEFAULT_GAMMA
    spec = speedup.parse_drafter_spec("early-exit:exit_layer=1,tree=2,1", target)
    assert spec.gamma == 2 and spec.generate_kwargs == {"tree": TreeSpec((2, 1))}
    assert spec.drafter[0].model.config.num_layers == 1
    # The alias early_exit, and a dynamic tree (its commas belong to the tree).
    spec = speedup.parse_drafter_spec("early_exit:tree=dynamic:depth=3,top_k=2,nodes=4", target)
    assert spec.gamma == 3 and spec.generate_kwargs["tree"] == DynamicTreeSpec(3, 2, 4)
    heads = init_heads("medusa", *target, num_heads=2)
    save_heads(tmp_path / "medusa", *heads)
    spec = speedup.parse_drafter_spec(f"medusa:heads={tmp_path / 'medusa'},gamma=2", target)
    assert spec.drafter[0].kind == "medusa"
    with pytest.raises(ValueError, match="holds medusa heads, not eagle"):
        speedup.parse_drafter_spec(f"eagle:heads={tmp_path / 'medusa'}", target)


@pytest.mark.parametrize(
    "text, message",
    [
        ("lookup:gamma=2", "unknown drafter kind 'lookup'"),
        ("ngram:gamma", "'gamma' is not key=value"),
        ("ngram:exit_layer=2", "exit_layer is a knob of drafter early-exit, not of ngram"),
        ("ngram:ngram_nn=2", "unknown key 'ngram_nn' for ngram .did you mean 'ngram_n'"),
        ("ngram:adaptive=yes", "adaptive must be 0 or 1"),
        ("eagle:gamma=2", "eagle needs heads="),
        # The older benchmark spellings are refused with the new one.
        ("early_exit:layer=1", "layer=1 is the old spelling: write exit_layer=N"),
        ("early-exit:tree=2-1", "write the branching with commas"),
        ("model:model=x,dyntree=3-2-4", "write tree=dynamic:depth=D,top_k=K,nodes=N"),
    ],
)
def test_parse_drafter_spec_errors(target, text, message):
    with pytest.raises(ValueError, match=message):
        speedup.parse_drafter_spec(text, target)


def test_prompt_set_one_by_one_pools_rows_and_compiles_once(target):
    drafter = NgramDrafter(3, 1)
    common = dict(gamma=3, max_new_tokens=12, repeats=1, prompt_bucket=32)
    speedup.time_prompts_one_by_one("warm", target, drafter, PROMPTS[:1], **common)
    traces = api.TRACE_COUNTS["speculative"]
    pooled = speedup.time_prompts_one_by_one("ngram", target, drafter, PROMPTS, **common)
    assert api.TRACE_COUNTS["speculative"] == traces  # one program for the whole set
    # Pooled statistics == the statistics of the same prompts decoded as one batch: greedy
    # decoding of a row does not depend on its batch neighbours (float32).
    batched = specjax.generate(target, drafter, PROMPTS, gamma=3, max_new_tokens=12)
    assert pooled.token_lists == batched.token_lists()
    assert pooled.tau == pytest.approx(batched.tau)
    np.testing.assert_allclose(pooled.alpha, batched.acceptance_per_position)
    assert pooled.batch == 1 and pooled.tokens == int(np.sum(batched.num_generated))
    assert pooled.ms_per_token == pytest.approx(1e3 * pooled.median_s / pooled.tokens)


def test_real_model_suite_rows_and_exactness(target):
    drafters = [
        speedup.parse_drafter_spec(text, target)
        for text in ("ngram:gamma=2", "early-exit:exit_layer=1,tree=2,1")
    ]
    common = dict(max_new_tokens=6, repeats=1, prompt_bucket=32, log=lambda _: None)
    rows = speedup.real_model_suite(
        target, PROMPTS, drafters, batches=[1], temperatures=[0.0, 1.0], **common
    ) + speedup.real_model_suite(
        target, PROMPTS, drafters, batches=[2], temperatures=[0.0], **common
    )
    names = [(r["batch"], r["temperature"], r["name"]) for r in rows]
    # batch 1: every drafter (trees sampled too); batch 2: the first drafter only.
    assert names == [
        (1, 0.0, "autoregressive"), (1, 0.0, "ngram:gamma=2"),
        (1, 0.0, "early-exit:exit_layer=1,tree=2,1"),
        (1, 1.0, "autoregressive"), (1, 1.0, "ngram:gamma=2"),
        (1, 1.0, "early-exit:exit_layer=1,tree=2,1"),
        (2, 0.0, "autoregressive"), (2, 0.0, "ngram:gamma=2"),
    ]  # fmt: skip
    greedy = [r for r in rows if r["temperature"] == 0.0]
    assert all(r["exact"] is True for r in greedy)  # float32: speculative == autoregressive
    # Sampled rows compare nothing: they once stored "exact": true all the same.
    assert all(r["exact"] is None for r in rows if r["temperature"] > 0)
    assert all(r["acceptance_tau"] >= r["tau"] for r in rows)
    assert all(r["rows_identical"] == r["prompts"] for r in greedy if "rows_identical" in r)
    assert all(r["prompts"] == (3 if r["batch"] == 1 else 2) for r in rows)
    assert all(r["tau"] >= 1.0 and r["ms_per_token"] > 0 for r in rows)


def test_exactness_runs_claim_no_speed(target, tmp_path):
    """With repeats=0 (an exactness run: one call per prompt, compilation included) no row
    carries a speed: the suite's rows, the pooled rows, the table and the log say untimed,
    while tau and exactness stay."""
    from specjax.bench import drafters as drafters_lib

    drafter = speedup.parse_drafter_spec("ngram:gamma=2", target)
    lines = []
    rows = drafters_lib.suite_per_set(
        target, {"a": PROMPTS[:2], "b": PROMPTS[2:]}, [drafter], temperatures=[0.0],
        max_new_tokens=6, repeats=0, prompt_bucket=32, log=lines.append,
    )  # fmt: skip
    assert {r.get("set") for r in rows} == {"a", "b", "all"}
    for row in rows:
        assert row["timed"] is False
        assert row["speedup"] is None and row["ms_per_token"] is None
        assert drafters_lib.ms_per_call(row) is None
        assert row["tau"] >= 1.0 and row["exact"] is True
    table = drafters_lib.markdown(rows)
    spec_line = next(line for line in table.splitlines() if "ngram" in line)
    cells = [c.strip() for c in spec_line.strip("|").split("|")]
    assert cells[4:7] == ["–", "–", "–"]  # ms_per_token, ms_per_call, speedup
    assert lines and all("untimed" in line for line in lines)
    assert not any("speedup=" in line for line in lines)
    (figure,) = drafters_lib.plot(rows, tmp_path / "bench.png", "untimed")
    assert figure.exists()


def test_untimed_marks_old_exactness_rows():
    """Rows of an exactness run written before rows recorded `timed` lose their speeds (the
    report's --untimed) and keep the rest."""
    from specjax.bench import drafters as drafters_lib

    old = {"name": "x", "speedup": 0.86, "ms_per_token": 39.6, "tokens_per_s": 25.0, "tau": 3.0}
    (row,) = drafters_lib.untimed([old])
    assert row == {**old, "timed": False, "speedup": None, "ms_per_token": None,
                   "tokens_per_s": None}  # fmt: skip
    assert old["speedup"] == 0.86  # the input is not changed


def test_synthetic_suite_rows():
    from specjax.bench.parallel import TINY, TINY_DRAFT

    probs = speedup.geometric_accept_probs(0.7, 2)
    rows = speedup.synthetic_suite(
        {"tiny": TINY}, TINY_DRAFT, gamma=2, accept_probs=probs, accept_source="test",
        batch=1, context=16, max_new_tokens=8, bandwidth=1e10, repeats=1, log=lambda _: None,
    )  # fmt: skip
    (row,) = rows
    assert row["target"] == "tiny" and row["acceptance_source"] == "test"
    assert row["c"] == pytest.approx(row["draft_step_ms"] / row["target_step_T1_ms"])
    assert row["forced_tau"] >= 1.0 and row["projected_speedup"] > 0


def test_agreement_counts_rows_and_first_divergence():
    ar = [[1, 2, 3, 4], [5, 6, 7], [8, 9]]
    assert speedup.agreement(ar, ar) == {"rows_identical": 3, "min_common_prefix": 2}
    spec = [[1, 2, 9, 9], [5, 6, 7], [8]]  # diverges at 2; identical; stops one token early
    assert speedup.agreement(spec, ar) == {"rows_identical": 1, "min_common_prefix": 1}


def test_real_model_suite_full_grid_and_traces(target, tmp_path, monkeypatch):
    """`full_grid_batches` runs every drafter at a batch > 1; `trace_dir` traces one call of
    every row after its timed calls: one trace folder per row, the loop's iteration count,
    and (with device events) the per-iteration figures from the summary."""
    from specjax.bench import trace

    drafters = [
        speedup.parse_drafter_spec(text, target) for text in ("ngram:gamma=2", "ngram:gamma=3")
    ]
    common = dict(max_new_tokens=6, repeats=1, prompt_bucket=32, log=lambda _: None)
    rows = speedup.real_model_suite(
        target, PROMPTS, drafters, batches=[2], temperatures=[0.0], full_grid_batches=[2],
        trace_dir=tmp_path, **common,
    )  # fmt: skip
    assert [r["name"] for r in rows] == ["autoregressive", "ngram:gamma=2", "ngram:gamma=3"]
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["autoregressive_b2_T0", "ngram_gamma_2_b2_T0", "ngram_gamma_3_b2_T0"]
    for row in rows:
        summary = row["trace"]
        # Every row advances at least once per verification call of its busiest row.
        assert row["verify_calls"] / 2 <= summary["iterations"] <= row["verify_calls"]
        assert summary["device_events"] == 0 and "note" in summary  # a CPU trace: no device
    # With device events (as on a GPU), the per-iteration figures divide the summary's totals.
    fake = {"device_events": 12, "kernels": 40, "busy_ms": 2.0, "top_kernels": []}
    monkeypatch.setattr(trace, "traced_events", lambda *a, **k: (dict(fake), []))
    (ar,) = speedup.real_model_suite(
        target, PROMPTS, [], batches=[2], temperatures=[0.0], trace_dir=tmp_path, **common
    )
    iterations = ar["trace"]["iterations"]
    assert ar["trace"]["kernels_per_iteration"] == pytest.approx(40 / iterations)
    assert ar["trace"]["busy_ms_per_iteration"] == pytest.approx(2.0 / iterations)
