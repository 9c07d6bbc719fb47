"""The per-set drafter comparison pools its sets exactly: the "all" rows equal one run over
every prompt (tokens, τ, acceptance τ, α per position, greedy agreement)."""

import numpy as np
from support import TINY_LLAMA, random_model

from specjax.bench import drafters as drafters_bench
from specjax.bench import speedup


def test_pooled_rows_equal_one_run_over_every_prompt():
    target = random_model(TINY_LLAMA, seed=11)
    rng = np.random.default_rng(0)
    sets = {
        name: [rng.integers(1, 64, n).tolist() for n in lengths]
        for name, lengths in (("a", (5, 9)), ("b", (3, 7, 12)))
    }
    drafter = speedup.parse_drafter_spec("early-exit:exit_layer=1,gamma=3", target)
    # One timed run per prompt: the pooled speed arithmetic below needs timed rows (an
    # untimed one, repeats=0, carries no speed).
    common = dict(max_new_tokens=10, repeats=1, prompt_bucket=16)
    rows = drafters_bench.suite_per_set(
        target, sets, [drafter], temperatures=[0.0], log=lambda _: None, **common
    )
    assert [r["set"] for r in rows] == ["a", "a", "b", "b", "all", "all"]
    pooled = {r["name"]: r for r in rows if r["set"] == "all"}
    every = [p for prompts in sets.values() for p in prompts]
    kwargs = dict(gamma=3, temperature=0.0, **common)
    one = speedup.time_prompts_one_by_one(drafter.name, target, drafter.drafter, every,
                                             **kwargs)  # fmt: skip
    ar = speedup.time_prompts_one_by_one("autoregressive", target, None, every, **kwargs)
    spec = pooled[drafter.name]
    assert spec["tokens"] == one.tokens and spec["prompts"] == len(every)
    assert spec["verify_calls"] == one.verify_calls
    np.testing.assert_allclose(spec["tau"], one.tau, rtol=1e-12)
    np.testing.assert_allclose(spec["acceptance_tau"], one.acceptance_tau, rtol=1e-12)
    np.testing.assert_allclose(spec["alpha"], one.alpha, atol=1e-4)  # rounded to 4 places
    assert spec["rejected_per_position"] == one.rejected_per_position
    assert 0 < spec["alpha"][0] < 1  # a drafter that is sometimes right: the test means something
    assert spec["exact"] is (one.token_lists == ar.token_lists) is True
    assert spec["rows_identical"] == len(every)
    assert pooled["autoregressive"]["tokens"] == ar.tokens
    np.testing.assert_allclose(
        spec["speedup"], pooled["autoregressive"]["ms_per_token"] / spec["ms_per_token"]
    )
    table = drafters_bench.markdown(rows, sets=("a", "b"))
    assert table.count("\n") == 2 + 4 - 1 and "| set |" in table
    # ms per verification call: ms/token x tokens per call, i.e. x (τ + the first token each
    # prompt's prefill emits, per call); one call per token for autoregressive decoding.
    per_call = spec["ms_per_token"] * (spec["tau"] + spec["prompts"] / spec["verify_calls"])
    np.testing.assert_allclose(drafters_bench.ms_per_call(spec), per_call, rtol=1e-9)
    ar_row = pooled["autoregressive"]
    assert drafters_bench.ms_per_call(ar_row) == ar_row["ms_per_token"]


def _set_row(name: str, set_name: str, **counts) -> dict:
    return dict(name=name, batch=1, gamma=2, temperature=0.0, set=set_name, prompts=1,
                tokens=10, median_s=0.01, compile_s=1.0, exact=True, **counts)  # fmt: skip


def test_pooled_alpha_reads_the_rejection_counts():
    """Two sets of a 2-deep tree: set a's 4 calls accepted 2, 2, 1 (then a leaf) and 0
    drafts; set b's 2 calls 1 (then a rejection) and 2. Of the 5 calls that accepted
    position 1, one stopped at a leaf: position 2 was reached 4 times, alpha 3/4 (3/5 if
    every call had drafted 2 deep). Rows stored without the rejection counts pool as before."""
    rows = [
        _set_row("autoregressive", "a", verify_calls=9),
        _set_row("autoregressive", "b", verify_calls=9),
        _set_row(
            "tree", "a", verify_calls=4, accepted_per_position=[3, 2], rejected_per_position=[1, 0]
        ),  # fmt: skip
        _set_row(
            "tree", "b", verify_calls=2, accepted_per_position=[2, 1], rejected_per_position=[0, 1]
        ),  # fmt: skip
    ]
    pooled = {r["name"]: r for r in drafters_bench.pool_sets(rows) if r["set"] == "all"}
    tree = pooled["tree"]
    assert tree["accepted_per_position"] == [5, 3] and tree["rejected_per_position"] == [1, 1]
    assert tree["alpha"] == [round(5 / 6, 4), 0.75]  # reached: 5 + 1, 3 + 1
    old = [{k: v for k, v in r.items() if k != "rejected_per_position"} for r in rows]
    tree_old = next(r for r in drafters_bench.pool_sets(old) if r["name"] == "tree" and
                    r["set"] == "all")  # fmt: skip
    assert "rejected_per_position" not in tree_old
    assert tree_old["alpha"] == [round(5 / 6, 4), 0.6]  # reached: 6 calls, then 5


def test_acceptance_replayed_from_a_bench_row(tmp_path):
    """`load_acceptance("BENCH.json#NAME")`: the pooled greedy row's accepted-length histogram,
    whose mean + 1 is the row's acceptance τ (counted by the decode loop itself)."""
    import json

    import pytest

    from specjax.bench.parallel import load_acceptance

    target = random_model(TINY_LLAMA, seed=11)
    rng = np.random.default_rng(1)
    sets = {"a": [rng.integers(1, 64, n).tolist() for n in (6, 11, 4)]}
    drafter = speedup.parse_drafter_spec("early-exit:exit_layer=1,gamma=3,name=ee", target)
    rows = drafters_bench.suite_per_set(
        target, sets, [drafter], temperatures=[0.0], log=lambda _: None,
        max_new_tokens=12, repeats=0, prompt_bucket=16,
    )  # fmt: skip
    path = tmp_path / "bench_real.json"
    path.write_text(json.dumps({"rows": rows}))
    row = next(r for r in rows if r["name"] == "ee" and r["set"] == "all")
    accept = load_acceptance(f"{path}#ee", gamma=3)
    assert accept.gamma == 3 and accept.verify_calls == row["verify_calls"]
    assert sum(accept.probs) == pytest.approx(1.0)
    assert 0 < accept.probs[0] < 1  # a drafter that is sometimes right and sometimes wrong
    assert accept.expected_tau == pytest.approx(row["acceptance_tau"], rel=1e-9)
    with pytest.raises(ValueError, match="no greedy batch-1 row 'nope'; rows: ee"):
        load_acceptance(f"{path}#nope")
    with pytest.raises(ValueError, match="drafted 3 positions"):
        load_acceptance(f"{path}#ee", gamma=4)
