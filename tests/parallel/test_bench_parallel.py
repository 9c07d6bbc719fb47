"""Smoke test of experiments/bench_parallel.py: the real command, tiny shapes, 8 fake CPU
devices, every section once at tp=2; spec: two draft shapes x both draft shardings at batch 1,
one of them at batch 2 (--full_grid_batches keeps the compiles down), with an acceptance
replayed from a generations.jsonl (numbers are meaningless; structure is checked). Plus the
settings errors, raised before any device work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from specjax.bench import parallel as parallel_bench

REPO = Path(__file__).resolve().parents[2]


def _generations(workdir: Path, gamma: int, from_draft: list[str]) -> Path:
    """A runner-like workdir: config.json (gamma) and generations.jsonl."""
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"gamma": gamma, "batch_size": 1}))
    path = workdir / "generations.jsonl"
    path.write_text("".join(json.dumps({"id": i, "from_draft": s}) + "\n" for i, s in
                            enumerate(from_draft)))  # fmt: skip
    return path


def test_bench_parallel_command(tmp_path):
    # gamma 3; accepted per call: [3, 0, 2] (trailing "1" cut by the budget: dropped) and
    # [1, 3, 3], so counts [1, 1, 1, 3] and E[tau] = (1 + 2 + 3 + 4 * 3) / 6 = 3.
    generations = _generations(
        tmp_path / "run", 3, ["0" + "1110" + "0" + "110" + "1", "0" + "10" + "1110" + "1110"]
    )
    out = tmp_path / "parallel_bench.json"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        # LLVM optimisation and its expensive passes off (as `make test` sets them for the
        # suite): this test's time is compile time.
        XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
        "--xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false",
    )
    command = [
        sys.executable, "-m", "experiments.bench_parallel", "--shape=tiny", "--tp=2",
        "--step_tokens=1", "--ar_batches=1", "--dp_batch=2", "--context=16",
        "--prompt_len=4", "--max_new_tokens=6", "--repeats=1",
        "--draft_shapes=tiny-draft-2", "--draft_sharding=replicated,sharded",
        "--spec_batches=1,2", "--full_grid_batches=1", f"--accept_from={generations}",
        f"--out={out}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["synthetic_weights"] and result["devices"].endswith("x8")
    assert result["copy_bandwidth_GBps"] > 0
    assert result["gamma"] == 3  # from the run's config.json
    np.testing.assert_allclose(
        result["acceptance"]["accept_length_probs"], np.array([1, 1, 1, 3]) / 6
    )
    assert result["acceptance"]["expected_tau"] == pytest.approx(3.0)
    rows = result["rows"]
    sections = ("step", "ar", "draft", "spec", "dp")
    by_section = {s: [r for r in rows if r["section"] == s] for s in sections}
    assert [(r["T"], r["tp"]) for r in by_section["step"]] == [(1, 2)]  # also c's denominator
    assert by_section["step"][0]["floor_ms"] > 0
    assert [(r["batch"], r["tp"], r["tokens"]) for r in by_section["ar"]] == [(1, 2, 6)]
    assert by_section["ar"][0]["floor_ms_per_token"] > 0
    pairs = [("tiny-draft-2", s) for s in ("replicated", "sharded")]
    assert [(r["draft_shape"], r["draft_sharding"]) for r in by_section["draft"]] == pairs
    for row in by_section["draft"]:
        assert row["target_step_ms"] == by_section["step"][0]["median_ms"]
        assert row["T"] == 1 and row["batch"] == 1 and row["c"] > 0 and row["floor_ms"] > 0
    specs = by_section["spec"]
    # Batch 1 runs the full grid; batch 2 (outside --full_grid_batches) the first pair only.
    assert [(r["batch"], r["draft_shape"], r["draft_sharding"]) for r in specs] == [
        (1, d, s) for d, s in pairs
    ] + [(2, "tiny-draft-2", "replicated")]
    for spec in specs:
        assert spec["gamma"] == 3 and spec["replayed_tau"] == pytest.approx(3.0)
        assert spec["tau"] > 1.0  # the replayed acceptance took effect
        assert str(generations) in spec["acceptance_source"]
        assert "replayed" in spec["acceptance_source"]
        assert spec["alpha"] is None
        for key in ("c", "ar_ms_per_token", "projected_speedup", "floor_ms_per_token",
                    "ar_floor_ms_per_token"):  # fmt: skip
            assert np.isfinite(spec[key]) and spec[key] > 0, key
    # dp: one device, then (data 4, model 2), skipped as batch 2 does not split 4 ways (one
    # compile less for this test).
    assert [(r["data"], r["tp"]) for r in by_section["dp"]] == [(1, 1)]
    assert "skip dp mesh (4, 2)" in done.stdout
    for row in rows:
        assert np.isfinite(row["median_ms"]) and row["median_ms"] > 0
    # The markdown tables are printed.
    for title in (
        "One target forward", "Autoregressive", "One draft forward", "PROJECTED",
        "replayed tau", "floor ms/token", "tiny-draft-2 | sharded", "Throughput, batch 2",
    ):  # fmt: skip
        assert title in done.stdout, title


def _settings(**kwargs) -> parallel_bench.Settings:
    return parallel_bench.Settings(shape="tiny", tp=(2,), sections=("spec",), **kwargs)


def test_settings_errors(tmp_path):
    """Clear messages, raised before any model is built or compiled."""
    generations = _generations(tmp_path / "run", 3, ["0" + "1110" + "10"])
    with pytest.raises(ValueError, match="gamma=4 given, but .* generated with gamma=3"):
        parallel_bench.run(_settings(accept_from=str(generations), gamma=4))
    long_run = _generations(tmp_path / "long", 3, ["0" + "11110"])
    with pytest.raises(ValueError, match="run of 4 accepted draft tokens is longer than gamma=3"):
        parallel_bench.run(_settings(accept_from=str(long_run)))
    histogram = tmp_path / "accept.json"
    histogram.write_text(json.dumps({"accept_length_probs": [0.5, 0.5], "source": "x"}))
    with pytest.raises(ValueError, match="gamma=2 given, but the histogram .* has 2 bins"):
        parallel_bench.run(_settings(accept_from=str(histogram), gamma=2))
    with pytest.raises(ValueError, match="unknown draft shape 'nope'"):
        parallel_bench.run(_settings(draft_shapes=("tiny-draft", "nope")))
    with pytest.raises(ValueError, match="unknown draft sharding 'split'"):
        parallel_bench.run(_settings(draft_sharding=("split",)))
    with pytest.raises(ValueError, match="not both"):
        parallel_bench.run(_settings(draft_sharding=("sharded",), shard_drafter=True))


def test_acceptance_sources(tmp_path):
    histogram = tmp_path / "accept.json"
    histogram.write_text(json.dumps({"accept_length_probs": [1, 1, 2], "source": "qwen g2"}))
    accept = parallel_bench.load_acceptance(histogram)
    assert accept.gamma == 2 and accept.probs == (0.25, 0.25, 0.5)
    assert accept.expected_tau == pytest.approx(0.25 + 0.5 + 1.5)
    assert "qwen g2" in accept.source and "replayed" in accept.source
    assumed = parallel_bench.acceptance(parallel_bench.Settings(alpha=0.5))
    assert assumed.gamma == parallel_bench.DEFAULT_GAMMA and "assumed" in assumed.source
    # The old single-draft flags still mean what they did.
    assert parallel_bench.Settings(shape="llama3-70b").drafts() == (["llama3.2-1b"], ["replicated"])
    assert parallel_bench.Settings(draft_shape="llama3.2-3b", shard_drafter=True).drafts() == (
        ["llama3.2-3b"],
        ["sharded"],
    )
    # Llama-3.2-3B's published size: 3.21 B parameters (tied embeddings).
    assert parallel_bench.SHAPES["llama3.2-3b"].num_params() == pytest.approx(3.21e9, rel=0.01)


def test_vocab_section_times_both_filters_on_the_same_tokens():
    """--sections=vocab: top-k sampling at tp=2, the vocab-parallel filter and GSPMD's gather
    as two programs; they draw the same tokens (the filter keeps exactly the tokens the
    gathered sort keeps), and the table says so."""
    settings = parallel_bench.Settings(
        shape="tiny", tp=(2,), sections=("vocab",), ar_batches=(2,), prompt_len=4,
        max_new_tokens=6, repeats=0, top_k=5, bandwidth_bytes=1e6,
    )  # fmt: skip
    result = parallel_bench.run(settings, log=lambda line: None)
    rows = [r for r in result["rows"] if r["section"] == "vocab"]
    assert [r["vocab_filter"] for r in rows] == list(parallel_bench.VOCAB_FILTERS)
    assert all(r["same_tokens"] and r["tokens"] == 2 * 6 and r["tp"] == 2 for r in rows)
    assert "gspmd / shard_map" in parallel_bench.markdown(result)
    with pytest.raises(ValueError, match="vocab section samples top-k: it needs temperature"):
        parallel_bench.run(
            parallel_bench.Settings(shape="tiny", sections=("vocab",), temperature=0)
        )
