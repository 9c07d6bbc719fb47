"""The profiler's parts on CPU: the trace reader on a hand-made trace (the GPU trace format),
the HLO kernel counter on a compiled decode loop, and one tiny end-to-end profile."""

import gzip
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from specjax.bench import kernels, profile, trace

# A real pair's recorded acceptance (Qwen2.5-Coder 1.5B drafted by 0.5B, gamma 4).
QWEN_PAIR_TRACE = Path(__file__).parents[2] / "docs/benchmarks/qwen_pair_gamma4/generations.jsonl"


def _trace_events():
    """A GPU trace as jax.profiler writes it: metadata names processes and threads; the
    "XLA Ops" line repeats kernel time and must not be counted."""
    meta = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "thread_name", "pid": 2, "tid": 7, "args": {"name": "Stream #7"}},
        {"ph": "M", "name": "thread_name", "pid": 2, "tid": 9, "args": {"name": "XLA Ops"}},
    ]
    kernel = lambda name, ts, dur, tid=7, pid=2: {  # noqa: E731
        "ph": "X", "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur,
    }  # fmt: skip
    return meta + [
        kernel("gemv_bf16", 0.0, 10.0),
        kernel("MemcpyD2D", 10.0, 30.0),  # a weight copy: 30 of 60 device microseconds
        kernel("loop_fusion_3", 50.0, 10.0),
        kernel("gemv_bf16", 100.0, 10.0),
        kernel("fusion.3", 50.0, 10.0, tid=9),  # derived line: ignored
        kernel("host_work", 0.0, 500.0, tid=1, pid=1),  # host: ignored
    ]


def test_trace_summary_counts_device_streams_only(tmp_path):
    path = tmp_path / "host.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": _trace_events()}, f)
    assert trace.find_trace_file(tmp_path) == path
    events = trace.device_events(trace.load_events(path))
    assert [e.name for e in events] == ["gemv_bf16", "MemcpyD2D", "loop_fusion_3", "gemv_bf16"]
    summary = trace.summarize(events, tokens=2, num_layers=1, wall_ms=0.2)
    assert summary["kernels"] == 3 and summary["memcpy_count"] == 1
    assert summary["memcpy_share"] == pytest.approx(0.5)
    assert summary["busy_ms"] == pytest.approx(0.060)  # union of [0,40], [50,60], [100,110]
    assert summary["busy_share_of_wall"] == pytest.approx(0.3)
    assert summary["kernels_per_token"] == 1.5
    assert summary["top_kernels"][0]["name"] == "MemcpyD2D"
    assert summary["top_kernels"][1] == {
        "name": "gemv_bf16", "count": 2, "total_ms": 0.02, "share": pytest.approx(1 / 3),
        "mean_us": 10.0,
    }  # fmt: skip


def test_busy_time_merges_overlapping_streams():
    events = [trace.DeviceEvent(f"k{i}", start, dur, "/device:GPU:0", "Stream #1")
              for i, (start, dur) in enumerate([(0, 10), (5, 10), (30, 5), (31, 1)])]  # fmt: skip
    assert trace.busy_us(events) == 20.0


def test_loop_kernels_attributes_layers():
    """A while loop over a two-layer body: kernels tagged by their layer scope, and a nested
    loop reported apart."""

    def body(carry):
        i, x = carry
        for layer in range(2):
            with jax.named_scope(f"layer{layer}"):
                x = jnp.tanh(x @ x.T) + jnp.sort(x, axis=-1)
        x = jax.lax.fori_loop(0, i, lambda _, y: jnp.cos(y) @ y, x)
        return i + 1, x

    fn = jax.jit(lambda x: jax.lax.while_loop(lambda c: c[0] < 3, body, (0, x)))
    text = fn.lower(jnp.ones((8, 8))).compile().as_text()
    found = kernels.loop_kernels(text, num_layers=2)
    assert found["layers_seen"] == 2 and set(found["per_layer"]) == {0, 1}
    assert found["per_layer"][0] == found["per_layer"][1] >= 2
    assert found["kernels_per_layer"] == found["per_layer"][0]
    assert len(found["nested_loops"]) == 1 and found["nested_loops"][0] >= 1
    with pytest.raises(ValueError, match="no ENTRY"):
        kernels.loop_kernels("garbage", 1)


def test_profile_end_to_end_on_cpu(tmp_path):
    """Every section of a tiny shape runs, with the HLO kernel counts of the loops; on CPU the
    trace has no device events and says so instead of reporting zeros as measurements."""
    settings = profile.ProfileSettings(
        shape="tiny", what=("step", "ar", "spec"), dtype="float32", context=16, new_tokens=8,
        gamma=4, repeats=1, label="cpu", accept_from=str(QWEN_PAIR_TRACE),
    )  # fmt: skip
    result = profile.run(settings, tmp_path, bandwidth=1e10, log=lambda _: None)
    step, ar, spec = (result["sections"][k] for k in ("step", "ar", "spec"))
    assert step["target_T1_ms"] > 0 and step["c"] > 0
    assert ar["new_tokens"] == 8 and ar["ms_per_token_incl_prefill"] > 0
    assert ar["ms_per_token"] == pytest.approx((ar["wall_ms"] - ar["prefill_ms"]) / 8)
    assert spec["tau"] >= 1 and spec["speedup_vs_ar"] > 0
    assert "generations.jsonl" in spec["acceptance"] and len(spec["accept_length_probs"]) == 5
    assert "no device kernel events" in ar["trace"]["note"]
    assert (tmp_path / "profile_cpu_tiny.json").exists()
    assert "| cpu | tiny | ar |" in profile.markdown([result])


def test_find_dump_picks_the_module(tmp_path):
    for name in ["module_0001.jit__autoregressive.cpu_after_optimizations.txt",
                 "module_0002.jit_profile_step_tiny_target_T1.after_optimizations.txt",
                 "module_0003.jit__autoregressive.before_optimizations.txt"]:  # fmt: skip
        (tmp_path / name).write_text("x")
    assert kernels.find_dump(tmp_path, "_autoregressive").name.startswith("module_0001")
    assert kernels.find_dump(tmp_path, "profile_step_tiny_target_T1").name.startswith("module_0002")
    with pytest.raises(FileNotFoundError, match="_speculative"):
        kernels.find_dump(tmp_path, "_speculative")


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown sections"):
        profile.ProfileSettings(shape="tiny", what=("stepp",))
    with pytest.raises(ValueError, match="unknown shape 'llama9'"):
        profile.ProfileSettings(shape="llama9")
    with pytest.raises(ValueError, match="no default draft shape for smollm2-135m"):
        profile.ProfileSettings(shape="smollm2-135m", what=("spec",))
    profile.ProfileSettings(shape="smollm2-135m", what=("step", "ar"))  # no draft needed
    with pytest.raises(ValueError, match="new_tokens must be >= 1"):
        profile.ProfileSettings(shape="tiny", new_tokens=0)


def test_real_pair_sweep_rows():
    """The gamma sweep on a tiny pair whose draft IS the target: every draft token accepted
    (acceptance tau = gamma + 1 exactly; the budget of 6 cuts the second call, so 5 tokens
    came out of 2 calls: tau 2.5), greedy rows equal AR, a pooled row per config, and the
    Leviathan prediction with alpha fitted to the acceptance tau (alpha = 1 here)."""
    from support import TINY_LLAMA, random_model

    from specjax.bench import real_pair

    target = random_model(TINY_LLAMA, seed=3)
    sets = {"a": [[1, 2, 3, 4, 5, 1, 2, 3], [7, 8, 9]], "b": [[4, 4, 4, 5]]}
    costs = real_pair.StepCosts(target_ms=2.0, draft_ms=0.5, verify_ms={2: 3.0})
    rows = real_pair.gamma_sweep(
        target, target, sets, gammas=[2], ngram_gammas=[3], max_new_tokens=6, repeats=0,
        prompt_bucket=16, costs=costs, log=lambda _: None,
    )  # fmt: skip
    assert [(r["config"], r["set"]) for r in rows] == [
        (config, s)
        for config in ("autoregressive", "draft model γ=2", "prompt lookup γ=3")
        for s in ("a", "b", "all")
    ]
    model_all = rows[5]
    assert model_all["prompts"] == 3 and model_all["rows_identical"] == 3
    assert model_all["acceptance_tau"] == pytest.approx(3.0) and model_all["alpha"] == 1.0
    assert model_all["tau"] == pytest.approx(2.5)
    assert model_all["c"] == 0.25 and model_all["verify_cost"] == 1.5
    assert model_all["predicted"] == pytest.approx(3.0 / (2 * 0.25 + 1))
    assert model_all["predicted_verify_measured"] == pytest.approx(3.0 / (2 * 0.25 + 1.5))
    lookup_all = rows[8]
    assert lookup_all["c"] == 0.0 and lookup_all["rows_identical"] == 3
    assert "| draft model γ=2 | all |" in real_pair.markdown(rows)


def test_real_pair_step_costs(tmp_path):
    """The step costs the real-pair sweep measures first (a broken import here once failed
    `experiments.real_pair` on the GPU before any row): positive times, c = draft / target,
    one verification cost per gamma."""
    from support import TINY_LLAMA, random_model

    from specjax.bench import real_pair

    target, draft = random_model(TINY_LLAMA, seed=3), random_model(TINY_LLAMA, seed=4)
    costs = real_pair.step_costs(target, draft, [2], context=8, trace_root=tmp_path)
    assert costs.target_ms > 0 and costs.draft_ms > 0 and set(costs.verify_ms) == {2}
    assert costs.c == pytest.approx(costs.draft_ms / costs.target_ms)
