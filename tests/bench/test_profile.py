"""The profiler's parts on CPU: the trace reader on a hand-made trace (the GPU trace format),
the HLO kernel counter on a compiled decode loop, and one tiny end-to-end profile."""

import gzip
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax.bench import kernels, profile, trace
from specjax.decoding import speculative

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


# A decode loop as XLA:GPU dumps it: layer 0's multiply-add fusion and layer 1's of the same
# code (one kernel, named after layer 0's), a reduction, a Pallas call and a cuBLAS call.
_FUSED_COMPUTATIONS = """HloModule jit_f, is_scheduled=true

%fused_add (param_0: f32[8], param_1: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  %param_1 = f32[8]{0} parameter(1)
  %multiply.1 = f32[8]{0} multiply(%param_0, %param_1)
  ROOT %add.1 = f32[8]{0} add(%multiply.1, %param_1)
}

%fused_add.1 (param_0.1: f32[8], param_1.1: f32[8]) -> f32[8] {
  %param_0.1 = f32[8]{0} parameter(0)
  %param_1.1 = f32[8]{0} parameter(1)
  %multiply.2 = f32[8]{0} multiply(%param_0.1, %param_1.1)
  ROOT %add.2 = f32[8]{0} add(%multiply.2, %param_1.1)
}

%region_sum (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.3 = f32[] add(%a, %b)
}

%fused_reduce (param_0.2: f32[8]) -> f32[] {
  %param_0.2 = f32[8]{0} parameter(0)
  %exponential.1 = f32[8]{0} exponential(%param_0.2)
  %constant.1 = f32[] constant(0)
  ROOT %reduce.1 = f32[] reduce(%exponential.1, %constant.1), dimensions={0}, to_apply=%region_sum
}

"""
_LOOP_BODY = [
    "%arg = (s32[], f32[8]{0}) parameter(0)",
    "%gte.0 = s32[] get-tuple-element(%arg), index=0",
    "%gte.1 = f32[8]{0} get-tuple-element(%arg), index=1",
    "%loop_add_fusion = f32[8]{0} fusion(%gte.1, %gte.1), kind=kLoop, calls=%fused_add, "
    'metadata={op_name="jit(f)/while/body/layer0/add"}',
    "%loop_add_fusion.1 = f32[8]{0} fusion(%loop_add_fusion, %arg#1), kind=kLoop, "
    'calls=%fused_add.1, metadata={op_name="jit(f)/while/body/layer1/add"}',
    "%input_reduce_fusion.7 = f32[] fusion(%loop_add_fusion.1), kind=kInput, "
    'calls=%fused_reduce, metadata={op_name="jit(f)/while/body/layer1/reduce_sum"}',
    "%custom-call.3 = f32[8]{0} custom-call(%loop_add_fusion.1), "
    'custom_call_target="__gpu$xla.gpu.triton", '
    'metadata={op_name="jit(f)/while/body/layer1/pallas_call"}, '
    'backend_config={ir = "...", name = "specjax_decode_attention"}',
    "%custom-call.4 = f32[8]{0} custom-call(%custom-call.3), "
    'custom_call_target="__cublas$gemm", metadata={op_name="jit(f)/while/body/layer1/dot"}',
    '%add.4 = s32[] add(%gte.0, %gte.0), metadata={op_name="jit(f)/while/body/add"}',
    "ROOT %tuple.1 = (s32[], f32[8]{0}) tuple(%add.4, %custom-call.4)",
]
_CONDITION_AND_ENTRY = """%cond (arg.1: (s32[], f32[8])) -> pred[] {
  %arg.1 = (s32[], f32[8]{0}) parameter(0)
  %gte.2 = s32[] get-tuple-element(%arg.1), index=0
  %constant.2 = s32[] constant(3)
  ROOT %compare.1 = pred[] compare(%gte.2, %constant.2), direction=LT
}

ENTRY %main (x: f32[8]) -> f32[8] {
  %x = f32[8]{0} parameter(0)
  %constant.3 = s32[] constant(0)
  %tuple.2 = (s32[], f32[8]{0}) tuple(%constant.3, %x)
  %while.1 = (s32[], f32[8]{0}) while(%tuple.2), condition=%cond, body=%body
  ROOT %gte.3 = f32[8]{0} get-tuple-element(%while.1), index=1
}
"""
_LOOP_HLO = (
    _FUSED_COMPUTATIONS
    + "%body (arg: (s32[], f32[8])) -> (s32[], f32[8]) {\n"
    + "".join(f"  {line}\n" for line in _LOOP_BODY)
    + "}\n\n"
    + _CONDITION_AND_ENTRY
)


def test_layer_kernels_times_one_layer_from_a_trace():
    """Layer 1's kernels in schedule order: the fusion that shares layer 0's kernel takes its
    events, the Pallas call its kernel's, a reduction and a cuBLAS call with no event of their
    name stay unmatched (None, never a guess)."""
    durations = {
        "loop_add_fusion": [2.0, 4.0, 3.0, 3.0],  # layer 0's and layer 1's launches
        "specjax_decode_attention": [10.0, 12.0],
        "sm90_xmma_gemm_f32": [7.0, 7.0],  # the cuBLAS call's kernel: no HLO name to match
    }
    found = kernels.layer_kernels(_LOOP_HLO, 1, durations, tokens=2)
    rows = found["layer_kernels"]
    assert [r["name"] for r in rows] == [
        "loop_add_fusion.1", "input_reduce_fusion.7", "custom-call.3", "custom-call.4",
    ]  # fmt: skip
    assert [r["kind"] for r in rows] == ["kLoop", "kInput", "custom-call", "custom-call"]
    assert [r["ops"] for r in rows] == [
        "add,multiply", "exponential,reduce", "__gpu$xla.gpu.triton:specjax_decode_attention",
        "__cublas$gemm",
    ]  # fmt: skip
    assert [r["trace_name"] for r in rows] == [
        "loop_add_fusion", "", "specjax_decode_attention", "",
    ]  # fmt: skip
    assert [r["mean_us"] for r in rows] == [3.0, None, 11.0, None]
    assert [r["count_per_token"] for r in rows] == [2.0, 0.0, 1.0, 0.0]
    assert found["layer_kernels_layer"] == 1
    assert found["layer_kernels_us_sum"] == 14.0 and found["layer_kernels_unmatched"] == 2
    # An instruction traced under its own name: itself (the sanitized name), no lookalike.
    layer0 = kernels.layer_kernels(kernels.parse(_LOOP_HLO), 0, {"loop_add_fusion": [5.0]})
    assert [(r["name"], r["mean_us"]) for r in layer0["layer_kernels"]] == [
        ("loop_add_fusion", 5.0)
    ]
    table = profile.layer_kernel_table(found, "cpu tiny ar")
    assert table.startswith("Layer 1 kernels: cpu tiny ar")
    assert "| `input_reduce_fusion.7` | kInput | exponential,reduce | – | – |" in table
    assert "| sum |  |  | 14.00 | 2 unmatched |" in table


def test_phase_times_split_a_loops_gpu_time_by_scope():
    """Each trace name's time goes to the phase of the launches that ran it: a kernel shared
    by two phases' launches is split by launch count (and reported as shared), names of no
    loop launch (a cuBLAS kernel, prefill) are outside, a launch of no phase is unscoped."""
    phased = _LOOP_HLO.replace("body/layer0/", "body/draft/layer0/").replace(
        "body/layer1/", "body/verify/layer1/"
    )
    durations = {
        "loop_add_fusion": [2.0, 4.0, 3.0, 3.0],  # draft's launch and verify's, same kernel
        "specjax_decode_attention": [10.0, 12.0],  # verify
        "sm90_xmma_gemm_f32": [7.0, 7.0],  # no HLO name: outside
        "prefill_fusion": [100.0],  # no launch of the loop: outside
    }
    found = kernels.phase_times(phased, durations, ("draft", "verify", "commit"), calls=2)
    ms, count = found["per_call_ms"], found["kernels_per_call"]
    assert ms["draft"] == pytest.approx(6.0 / 1e3 / 2)
    assert ms["verify"] == pytest.approx((6.0 + 22.0) / 1e3 / 2)
    assert ms["commit"] == 0 and ms["unscoped"] == 0
    assert count["draft"] == 1 and count["verify"] == 2
    assert found["shared_ms_per_call"] == pytest.approx(12.0 / 1e3 / 2)
    assert found["other_ms_per_call"] == pytest.approx(114.0 / 1e3 / 2)
    unphased = kernels.phase_times(_LOOP_HLO, durations, ("draft",))
    assert unphased["per_call_ms"]["unscoped"] == pytest.approx(34.0 / 1e3)
    assert unphased["per_call_ms"]["draft"] == 0


def test_phase_timeline_places_unnamed_kernels_by_order():
    """By order: prefill before the loop's first launch is outside; a cuBLAS kernel (no HLO
    name) belongs to the part running around it; a shared kernel stays in the current part
    when that part launches it, else goes to the part with most launches."""
    phased = _LOOP_HLO.replace("body/layer0/", "body/draft/layer0/").replace(
        "body/layer1/", "body/verify/layer1/"
    )

    def events(*spec):
        return [trace.DeviceEvent(name, t, dur, "/device:GPU:0", "Stream #1")
                for t, (name, dur) in enumerate(spec)]  # fmt: skip

    timeline = events(
        ("prefill_fusion", 100.0),  # before the loop: outside
        ("loop_add_fusion", 2.0),  # shared (draft, verify); no current part: most launches
        ("sm90_xmma_gemm_f32", 7.0),  # unnamed: the current part's
        ("specjax_decode_attention", 10.0),  # verify
        ("loop_add_fusion", 3.0),  # shared, current part verify launches it: verify
        ("sm90_xmma_gemm_f32", 7.0),  # unnamed: verify
    )
    found = kernels.phase_timeline(phased, timeline, ("draft", "verify", "commit"), calls=2)
    ms, count = found["per_call_ms"], found["kernels_per_call"]
    # The shared kernel's first event: draft and verify launch it once each (a tie): the
    # first counted, draft (schedule order), takes it, and the cuBLAS kernel after it.
    assert ms["draft"] == pytest.approx((2.0 + 7.0) / 1e3 / 2)
    assert ms["verify"] == pytest.approx((10.0 + 3.0 + 7.0) / 1e3 / 2)
    assert count["draft"] == 1 and count["verify"] == 1.5
    assert found["outside_ms_per_call"] == pytest.approx(100.0 / 1e3 / 2)
    assert found["inferred_ms_per_call"] == pytest.approx(14.0 / 1e3 / 2)
    # Each part's kernel list: verify's cuBLAS kernel, placed by order, 7 µs in one call of 2.
    gemm = next(k for k in found["kernels"]["verify"] if k["name"] == "sm90_xmma_gemm_f32")
    assert gemm["placed"] and gemm["mean_us"] == 7.0 and gemm["per_call"] == 0.5
    assert [k["name"] for k in found["kernels"]["verify"]][0] == "specjax_decode_attention"
    table = profile.part_kernel_table(found, "hand-made")
    assert "| verify | `sm90_xmma_gemm_f32` | 3.5 | 0.50 | 7.0 | placed |" in table
    # Every event is somewhere: parts + outside = all.
    total = sum(ms.values()) + found["outside_ms_per_call"]
    assert total == pytest.approx(sum(e.duration_us for e in timeline) / 1e3 / 2)


def test_phase_timeline_splits_idle_time_by_part():
    """The GPU's idle time before each event goes to that event's part (the prefill's and
    the gap before the loop's first launch outside); overlapping events leave no gap; gaps
    of at least LARGE_GAP_US are listed by (kernel before, kernel after)."""
    phased = _LOOP_HLO.replace("body/layer0/", "body/draft/layer0/").replace(
        "body/layer1/", "body/verify/layer1/"
    )
    big = kernels.LARGE_GAP_US

    def event(name, start, duration, stream="Stream #1"):
        return trace.DeviceEvent(name, start, duration, "/device:GPU:0", stream)

    timeline = [
        event("prefill_fusion", 0.0, 10.0),
        event("prefill_fusion", 13.0, 10.0),  # gap 3: outside
        event("specjax_decode_attention", 23.0 + big, 5.0),  # verify; gap `big`: verify's
        event("sm90_xmma_gemm_f32", 30.0 + big, 4.0),  # gap 2: verify (placed by order)
        event("copy_on_other_stream", 31.0 + big, 1.0, "Stream #2"),  # inside: no gap
        event("loop_add_fusion", 35.0 + big, 1.0),  # shared, current verify: gap 1, verify
    ]
    found = kernels.phase_timeline(phased, timeline, speculative.PHASES, calls=1)
    idle = found["idle_ms_per_call"]
    assert idle["outside"] == pytest.approx(3.0 / 1e3)
    assert idle["verify"] == pytest.approx((big + 2.0 + 1.0) / 1e3)
    assert idle["draft"] == 0.0 and idle["commit"] == 0.0
    (gap,) = found["largest_gaps"]  # only the one of at least LARGE_GAP_US
    assert (gap["before"], gap["after"]) == ("prefill_fusion", "specjax_decode_attention")
    assert gap["mean_us"] == pytest.approx(big) and gap["per_call"] == 1.0
    # Busy time and idle time together span the trace from the first event to the last.
    busy = trace.busy_us(timeline) / 1e3
    span = (timeline[-1].start_us + timeline[-1].duration_us - timeline[0].start_us) / 1e3
    assert busy + sum(idle.values()) == pytest.approx(span)
    rows = profile.gap_table(found, "hand-made")
    assert f"| `prefill_fusion` | `specjax_decode_attention` | 1.00 | {big:.1f} |" in rows
    result = {"label": "hand-made", "settings": {"tree": None},
              "sections": {"spec": {"phase_timeline": found, "ms_per_call": 0.05}}}  # fmt: skip
    verify = f"{found['per_call_ms']['verify']:.3f} / {idle['verify']:.3f}"
    assert f"| hand-made | chain | 0.000 / 0.000 | {verify} |" in profile.idle_table([result])


def test_phase_timeline_keeps_a_middle_call_in_order():
    """`one_call` is a middle iteration, each event with its part, gap and duration. An
    iteration starts where drafting follows the commit with a verification (at least
    MIN_VERIFY_EVENTS events) since the last start: a verification blip and a commit blip
    inside drafting start nothing (a prompt-lookup branch's drafting has both), and a
    drafting blip in the commit's tail (a kernel both launch, as on an H200) starts it
    there, two events early."""
    # Both launches of loop_add_fusion's kernel draft; the attention kernel verifies; the
    # reduction commits.
    phased = (
        _LOOP_HLO.replace("body/layer0/", "body/draft/layer0/")
        .replace("body/layer1/add", "body/draft/layer1/add")
        .replace("body/layer1/reduce_sum", "body/commit/layer1/reduce_sum")
        .replace("body/layer1/", "body/verify/layer1/")
    )
    names = {"draft": "loop_add_fusion", "verify": "specjax_decode_attention",
             "commit": "input_reduce_fusion_7"}  # fmt: skip
    passes = kernels.MIN_VERIFY_EVENTS - 1  # a target pass: these and one more event
    events, t = [], 0.0
    for call in range(3):
        parts = (
            ("draft", 2.0), ("verify", 0.5), ("commit", 0.5), ("draft", 2.0),
            *[("verify", 1.0)] * passes, ("verify", 5.0 + call),
            ("commit", 1.0), ("draft", 0.5), ("commit", 1.0),
        )  # fmt: skip
        for part, duration in parts:
            events.append(trace.DeviceEvent(names[part], t, duration, "/device:GPU:0", "S"))
            t += duration + 1.0  # a 1 µs gap before the next event
    found = kernels.phase_timeline(phased, events, speculative.PHASES, calls=3)
    # Starts: the first event, then each commit's drafting blip: the middle one is the second
    # call's, so the kept call ends with the third call's verification and commit.
    assert found["one_call"] == [
        ["draft", "loop_add_fusion", 1.0, 0.5],
        ["commit", "input_reduce_fusion_7", 1.0, 1.0],
        ["draft", "loop_add_fusion", 1.0, 2.0],
        ["verify", "specjax_decode_attention", 1.0, 0.5],
        ["commit", "input_reduce_fusion_7", 1.0, 0.5],
        ["draft", "loop_add_fusion", 1.0, 2.0],
        *[["verify", "specjax_decode_attention", 1.0, 1.0]] * passes,
        ["verify", "specjax_decode_attention", 1.0, 7.0],
        ["commit", "input_reduce_fusion_7", 1.0, 1.0],
    ]
    events_kept = 8 + passes  # rows are numbered from 0: the 7 µs pass is the last but one
    result = {"label": "hand-made", "sections": {"spec": {"phase_timeline": found}}}
    table = profile.one_call_tables(result)
    kernel_us = 0.5 + 1.0 + 2.0 + 0.5 + 0.5 + 2.0 + passes + 7.0 + 1.0
    assert f"({events_kept} events, {kernel_us:.1f} µs of kernels, " in table
    assert f"{float(events_kept):.1f} µs idle before them)" in table
    assert f"| {events_kept - 2} | verify | `specjax_decode_attention` | 1.00 | 7.00 |" in table
    assert profile.one_call_tables({"label": "x", "sections": {"ar": {}}}) == ""


@pytest.mark.parametrize("tree", [None, "dynamic:depth=2,top_k=2,nodes=3"])
def test_phase_scopes_reach_the_compiled_loops(tree):
    """Every part of a speculative iteration (chain and tree) names its kernels in the
    compiled HLO, so a trace splits by part: with one 1 µs event per launch, each phase's
    time is its launch count, and the parts together are every launch of the loop."""
    import functools

    from support import TINY_LLAMA, eagle_echo, random_model

    from specjax.decoding import tree as tree_lib
    from specjax.decoding.sampling import GREEDY

    target = random_model(TINY_LLAMA, seed=3)
    drafter, drafter_params = eagle_echo(target)
    if tree is None:
        generate = functools.partial(
            speculative.generate, gamma=2, verify_fn=None, max_new_tokens=8, cache_size=32
        )
    else:
        generate = functools.partial(
            tree_lib.generate, tree=tree_lib.as_tree_spec(tree), max_new_tokens=8,
            cache_size=32,
        )  # fmt: skip

    def run(params, drafter_params, prompt, lengths, eos, rng):
        return generate(target[0], params, drafter, drafter_params, prompt, lengths, GREEDY,
                        eos, rng)  # fmt: skip

    args = (target[1], drafter_params, jnp.ones((1, 4), jnp.int32), jnp.array([4]),
            jnp.array([-1]), jax.random.key(0))  # fmt: skip
    text = jax.jit(run).lower(*args).compile().as_text()
    entry, blocks = kernels.parse(text)
    body, *_ = kernels.main_loop(entry, blocks)
    launches = kernels._loop_launches(body, blocks)
    scopes = [kernels.phase_of(inst, blocks, speculative.PHASES) for inst in launches]
    assert set(speculative.PHASES) <= set(scopes)
    durations = {kernels.kernel_name(inst.name): [1.0] for inst in launches}
    found = kernels.phase_times(text, durations, speculative.PHASES)
    # The same launches as a timeline in schedule order: every event names its own part.
    ordered = [trace.DeviceEvent(kernels.kernel_name(inst.name), t, 1.0, "gpu", "s")
               for t, inst in enumerate(launches)]  # fmt: skip
    timeline = kernels.phase_timeline(text, ordered, speculative.PHASES)
    assert timeline["per_call_ms"] == pytest.approx(found["per_call_ms"])
    assert timeline["inferred_ms_per_call"] == 0 == timeline["outside_ms_per_call"]
    for phase in speculative.PHASES:
        assert found["per_call_ms"][phase] * 1e3 == pytest.approx(scopes.count(phase))
    assert found["per_call_ms"]["unscoped"] * 1e3 == pytest.approx(scopes.count("unscoped"))
    assert sum(found["kernels_per_call"].values()) == pytest.approx(len(launches))


def test_fused_ops_caps_long_lists():
    line = "%f = f32[8]{0} fusion(%p), kind=kLoop, calls=%c"
    body = [kernels.Instruction(f"i{n}", f"opcode{n:02d}", "", "") for n in range(20)]
    inst = kernels.Instruction("f", "fusion", "", line)
    ops = kernels.fused_ops(inst, {"c": body}, limit=40)
    assert len(ops) <= 40 and ops.endswith(",...") and ops.startswith("opcode00,opcode01")
    assert kernels.kernel_name("input_reduce_fusion.54") == "input_reduce_fusion_54"
    assert kernels.kernel_name("custom-call.3") == "custom_call_3"


def test_a_loop_no_longer_than_its_prefill_has_no_time():
    """wall - prefill is the loop's time only where it is positive: otherwise the two timings'
    noise exceeds the loop, and a zero or negative ms/token must not be reported."""
    assert profile.loop_ms_without_prefill(5.0, 2.0) == pytest.approx(3.0)
    assert profile.loop_ms_without_prefill(2.0, 2.0) is None
    assert profile.loop_ms_without_prefill(1.5, 2.0) is None


def test_a_prefill_longer_than_the_call_gives_no_speed(tmp_path, monkeypatch):
    """Where the separately timed prefill is not below a loop's wall time, that loop gets no
    ms/token, no x_floor and no speedup (None, "–" in the table), and the log says why."""
    from specjax.bench import steps as step_lib

    monkeypatch.setattr(step_lib, "time_prefill", lambda *args, **kwargs: 1e6)
    settings = profile.ProfileSettings(
        shape="tiny", what=("ar", "spec"), dtype="float32", context=16, new_tokens=8, gamma=4,
        repeats=1, label="cpu", accept_from=str(QWEN_PAIR_TRACE),
    )  # fmt: skip
    lines: list[str] = []
    result = profile.run(settings, tmp_path, bandwidth=1e10, log=lines.append)
    ar, spec = result["sections"]["ar"], result["sections"]["spec"]
    for section in (ar, spec):
        assert section["ms_per_token"] is None and section["ms_per_call"] is None
        assert section["x_floor"] is None and section["wall_ms"] > 0
    assert spec["speedup_vs_ar"] is None and spec["tau"] >= 1
    assert sum("timing noise exceeds the loop" in line for line in lines) == 2
    assert "| cpu | tiny | spec | – |" in profile.markdown([result])


def test_profile_end_to_end_on_cpu(tmp_path):
    """Every section of a tiny shape runs, with the HLO kernel counts of the loops; on CPU the
    trace has no device events and says so instead of reporting zeros as measurements."""
    # A tiny loop's wall time less its separately timed prefill is noise on a busy 2-core
    # machine: it came out negative at 8 new tokens (twenty-third session) and again at 32 for
    # the AR loop (twenty-fourth, a fresh-clone `make test`). The loop then has no ms/token
    # (test_a_prefill_longer_than_the_call_gives_no_speed forces that case); here
    # either outcome must be self-consistent.
    settings = profile.ProfileSettings(
        shape="tiny", what=("step", "ar", "spec"), dtype="float32", context=16, new_tokens=32,
        gamma=4, repeats=1, label="cpu", accept_from=str(QWEN_PAIR_TRACE),
    )  # fmt: skip
    result = profile.run(settings, tmp_path, bandwidth=1e10, log=lambda _: None)
    step, ar, spec = (result["sections"][k] for k in ("step", "ar", "spec"))
    assert step["target_T1_ms"] > 0 and step["c"] > 0
    assert ar["new_tokens"] == 32 and ar["ms_per_token_incl_prefill"] > 0
    for section in (ar, spec):
        if section["wall_ms"] > section["prefill_ms"]:
            loop_ms = section["wall_ms"] - section["prefill_ms"]
            assert section["ms_per_token"] == pytest.approx(loop_ms / section["new_tokens"])
        else:
            assert section["ms_per_token"] is None and section["x_floor"] is None
    assert spec["tau"] >= 1
    if ar["ms_per_token"] is None or spec["ms_per_token"] is None:
        assert spec["speedup_vs_ar"] is None
    else:
        assert spec["speedup_vs_ar"] == pytest.approx(ar["ms_per_token"] / spec["ms_per_token"])
    assert "generations.jsonl" in spec["acceptance"] and len(spec["accept_length_probs"]) == 5
    assert "no device kernel events" in ar["trace"]["note"]
    assert "layer_kernels" not in ar  # no HLO dump asked for (experiments/profile.py asks)
    assert (tmp_path / "profile_cpu_tiny.json").exists()
    assert "| cpu | tiny | ar |" in profile.markdown([result])
    # The given bandwidth is the floor's: bytes / 1e10 B/s, recorded as given.
    assert result["copy_bandwidth_GBps"] == 10 and result["bandwidth_source"] == "given"
    assert result["kernels"]["attention"] == "jnp"  # "auto" on the CPU backend
    from specjax.bench import steps
    from specjax.bench.parallel import SHAPES

    kv_bytes = steps.kv_bytes_read(SHAPES["tiny"], 1, 16, 4)  # batch 1, context 16, float32
    assert result["floor_ms"] == pytest.approx(1e3 * (result["weight_bytes"] + kv_bytes) / 1e10)


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
    with pytest.raises(ValueError, match="verify_tokens must be >= 1"):
        profile.ProfileSettings(shape="tiny", verify_tokens=(5, 0))


def test_profile_times_further_verification_widths(tmp_path):
    """verify_tokens: the step section also times verification of T tokens (a tree's N + 1),
    in a cache that holds the context plus those T (here beyond the loops' P + N + K + 1)."""
    settings = profile.ProfileSettings(
        shape="tiny", what=("step",), dtype="float32", context=16, new_tokens=4, gamma=2,
        verify_tokens=(33, 9), repeats=1, trace=False, label="w",
    )  # fmt: skip
    step = profile.run(settings, tmp_path, bandwidth=1e10, log=lambda _: None)["sections"]["step"]
    assert {"target_T1_ms", "target_verify_ms", "target_T9_ms", "target_T33_ms"} <= set(step)
    assert all(step[k] > 0 for k in ("target_T9_ms", "target_T33_ms"))
    # Every step is also timed in a device loop (no dispatch in that figure).
    assert all(step[f"target_{w}_loop_ms"] > 0 for w in ("T1", "verify", "T9", "T33"))


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


@pytest.mark.parametrize(
    "draft_shape, tree",
    [("eagle", "2,2"), ("eagle", "dynamic:depth=3,top_k=2,nodes=4"), ("", "")],
)
def test_profile_call_section_splits_an_iteration(tmp_path, draft_shape, tree):
    """call: drafting, verification and accept + commit of one iteration, each from a device
    loop of C calls (verify and accept + commit are differences of the programs' times); the
    spec loop of a tree reports its ms per call (greedy on synthetic weights) and no
    speedup, since it replays no acceptance."""
    settings = profile.ProfileSettings(
        shape="tiny", draft_shape=draft_shape, what=("spec", "call"), dtype="float32",
        context=16, new_tokens=6, gamma=3, tree=tree, calls=3, repeats=1, trace=False,
        label="c",
    )  # fmt: skip
    result = profile.run(settings, tmp_path, bandwidth=1e10, log=lambda _: None)
    call, spec = result["sections"]["call"], result["sections"]["spec"]
    assert call["verified_tokens"] == {"2,2": 7, "": 4}.get(tree, 5)
    assert call["verify_ms"] == pytest.approx(call["draft_verify_ms"] - call["draft_ms"])
    assert call["accept_commit_ms"] == pytest.approx(call["iteration_ms"] - call["draft_verify_ms"])
    assert call["draft_ms"] > 0 and call["iteration_ms"] > 0
    # (The prefill step is timed apart, dispatch included: on a CPU the difference can be < 0.)
    per_call = (spec["wall_ms"] - spec["prefill_ms"]) / spec["iterations"]
    assert call["loop_ms_per_call"] == spec["ms_per_call"] == pytest.approx(per_call)
    assert set(call["compile_s"]) == {"draft", "draft_verify", "iteration"}
    assert ("speedup_vs_ar" in spec) is False  # no AR section here; with a tree never
    assert "ms per call" in profile.markdown([result])


def test_profile_times_each_draft_weight_setting(tmp_path):
    """draft_weights: the EAGLE head's spec loop and call split once per setting in one
    process beside one AR loop, as sections spec / spec_int8 and call / call_int8, each
    recording the head's bytes (int8: a quarter of float32's, plus the scales), and the
    report showing them side by side."""
    settings = profile.ProfileSettings(
        shape="tiny", draft_shape="eagle", draft_vocab=200, draft_weights=("float", "int8"),
        what=("ar", "spec", "call"), dtype="float32", context=16, new_tokens=6, gamma=3,
        tree="dynamic:depth=3,top_k=2,nodes=4", calls=3, repeats=1, trace=False, label="w",
    )  # fmt: skip
    result = profile.run(settings, tmp_path, bandwidth=1e10, log=lambda _: None)
    sections = result["sections"]
    assert list(sections) == ["ar", "spec", "spec_int8", "call", "call_int8"]
    for weights, suffix in (("float", ""), ("int8", "_int8")):
        spec, call = sections["spec" + suffix], sections["call" + suffix]
        assert spec["draft_weights"] == call["draft_weights"] == weights
        assert call["loop_ms_per_call"] == spec["ms_per_call"] and call["draft_ms"] > 0
    float_bytes = sections["spec"]["draft_weight_bytes"]
    int8_bytes = sections["spec_int8"]["draft_weight_bytes"]
    assert 0.25 < int8_bytes / float_bytes < 0.3  # int8 matrices; float32 norms, biases, scales
    report = profile.markdown([result])
    assert "| w | tiny | spec |" in report and "| w | tiny | spec_int8 |" in report
    assert "| w (int8 draft) | tiny |" in report  # the call table
    assert "| w | spec_int8 | int8 |" in report  # the draft weights table


def test_bad_draft_weights():
    with pytest.raises(ValueError, match="need draft_shape='eagle'"):
        profile.ProfileSettings(shape="tiny", draft_weights=("float", "int8"))
    with pytest.raises(
        ValueError, match="among 'float', 'int8', 'int8_layer', 'int8_lm_head', got 'bfloat16'"
    ):
        profile.ProfileSettings(shape="tiny", draft_shape="eagle", draft_weights=("bfloat16",))
    with pytest.raises(ValueError, match="once each"):
        profile.ProfileSettings(shape="tiny", draft_shape="eagle", draft_weights=("int8", "int8"))
    with pytest.raises(ValueError, match="once each"):
        profile.ProfileSettings(shape="tiny", draft_shape="eagle", draft_weights=())


def test_call_programs_take_the_weights_as_arguments():
    """The call section's programs read the weights as arguments, not as constants captured
    in the program: captured, XLA compiled the 1.5B shape's 3.3 GB of weights into each
    program (minutes per compile, and a warning). No weight-sized constant in the HLO."""
    from specjax.bench import call_cost, steps
    from specjax.bench.parallel import SHAPES
    from specjax.decoding.tree import TreeSpec
    from specjax.drafters import heads

    target, params = steps.synthetic_model(SHAPES["tiny"], jnp.float32)
    drafter, drafter_params = heads.init_eagle(target, params, param_dtype=jnp.float32)
    shape = call_cost.CallShape(tree=TreeSpec((2, 1)))
    state, _ = call_cost.start_state(
        target, params, drafter, drafter_params, shape, batch=1, context=8, max_new_tokens=16
    )
    programs = call_cost.part_programs(target, params, drafter, drafter_params, shape, 16)
    smallest_weight = min(x.size for x in jax.tree.leaves(params) if x.ndim == 2)
    for name, program in programs.items():
        text = program.lower(params, drafter_params, state, jnp.int32(2)).as_text()
        assert max(_constant_sizes(text), default=0) < smallest_weight, name


@pytest.mark.parametrize("tree", [None, "dynamic:depth=2,top_k=2,nodes=3"])
def test_call_split_starts_with_the_drafter_caught_up(tree):
    """Every timed call is a later call of the loop: the start state has had its first
    drafting, so the head holds true entries up to the newest token and no timed call takes
    the prompt-wide catch-up branch (which the loop takes once per generation)."""
    from specjax.bench import call_cost, steps
    from specjax.bench.parallel import SHAPES
    from specjax.decoding.tree import parse_tree_spec
    from specjax.drafters import heads

    target, params = steps.synthetic_model(SHAPES["tiny"], jnp.float32)
    drafter, drafter_params = heads.init_eagle(target, params, param_dtype=jnp.float32)
    shape = call_cost.CallShape(gamma=3, tree=parse_tree_spec(tree) if tree else None)
    state, _ = call_cost.start_state(
        target, params, drafter, drafter_params, shape, batch=2, context=8, max_new_tokens=16
    )
    np.testing.assert_array_equal(state.drafter_state.true_lengths, state.seq_lengths - 1)


def test_call_programs_draft_with_the_decode_layout_weights(monkeypatch):
    """The split times drafting as `specjax.generate` drafts: with the head's weights in the
    decode layout, converted once (`drafter.decode_layout`, as `iteration_parts` does). In
    the storage layout every head call concatenated its q/k/v and gate/up weights again: the
    draft program then holds a concatenation as large as a head weight, which the converted
    program must not."""
    from specjax.bench import call_cost, steps
    from specjax.bench.parallel import SHAPES
    from specjax.decoding.drafter import decode_layout
    from specjax.drafters import heads

    target, params = steps.synthetic_model(SHAPES["tiny"], jnp.float32)
    drafter, stored = heads.init_eagle(target, params, param_dtype=jnp.float32)
    decoded = decode_layout(drafter, stored, params)
    assert "layer" in decoded["head"] and "layer" not in stored["head"]
    shape = call_cost.CallShape(gamma=3)
    # The fused q/k/v and gate/up kernels: what a storage-layout program rebuilds per call.
    fused_sizes = {x.size for x in jax.tree.leaves(decoded["head"]["layer"]) if x.ndim == 2}

    def weight_concatenations(drafter_params):
        state, _ = call_cost.start_state(
            target, params, drafter, drafter_params, shape, batch=1, context=8, max_new_tokens=16
        )
        program = call_cost.part_programs(target, params, drafter, drafter_params, shape, 16)
        text = program["draft"].lower(params, drafter_params, state, jnp.int32(2)).as_text()
        return fused_sizes & set(_concatenation_sizes(text))

    assert weight_concatenations(stored)  # the bias the conversion removes
    assert not weight_concatenations(decoded)

    # iteration_parts converts what it is handed before it builds the programs.
    seen = []
    real_part_programs = call_cost.part_programs

    def spy(target, params, drafter, drafter_params, *rest):
        seen.append(drafter_params)
        return real_part_programs(target, params, drafter, drafter_params, *rest)

    monkeypatch.setattr(call_cost, "part_programs", spy)
    call_cost.iteration_parts(
        target, params, drafter, stored, batch=1, context=8, shape=shape, calls=1, repeats=1
    )
    assert "layer" in seen[0]["head"]


def test_call_split_runs_eagle3_heads_with_the_targets_feature_layers():
    """An EAGLE-3 head's split runs the target as `specjax.generate` does for it
    (`drafter.target_for`): the loop state holds the [(n + 1) D] features the head's fuse
    layer reads (the plain target's D-wide hidden state would not fit the fuse), and every
    part is timed."""
    from specjax.bench import call_cost, steps
    from specjax.bench.parallel import SHAPES
    from specjax.drafters import heads

    target, params = steps.synthetic_model(SHAPES["tiny"], jnp.float32)
    drafter, drafter_params = heads.init_eagle(
        target, params, param_dtype=jnp.float32, feature_layers=(0,)
    )
    D = target.config.d_model
    shape = call_cost.CallShape(gamma=2)
    state, _ = call_cost.start_state(
        target, params, drafter, drafter_params, shape, batch=1, context=8, max_new_tokens=8
    )
    assert state.target_hidden.shape[-1] == 2 * D
    parts = call_cost.iteration_parts(
        target, params, drafter, drafter_params, batch=1, context=8, shape=shape, calls=1,
        repeats=1,
    )  # fmt: skip
    assert parts["draft_ms"] > 0 and parts["iteration_ms"] > 0


def _concatenation_sizes(hlo_text):
    """Element counts of the results of the concatenations in a lowered program's text."""
    import re

    pattern = r"stablehlo\.concatenate .*?-> tensor<([0-9x]+)\w+>"
    return [int(np.prod([int(d) for d in dims.split("x")[:-1]] or [1]))
            for dims in re.findall(pattern, hlo_text)]  # fmt: skip


def _constant_sizes(hlo_text):
    """Element counts of the dense constants in a lowered program's text."""
    import re

    pattern = r"dense<\"0x[0-9A-F]+\"> : tensor<([0-9x]+\w+)>"
    return [
        int(np.prod([int(d) for d in dims.split("x")[:-1]] or [1]))
        for dims in re.findall(pattern, hlo_text)
    ]


def test_step_in_a_device_loop_rolls_back_and_keeps_its_weights_as_arguments():
    """`time_step_in_loop`'s program: `count` forwards that leave the cache at the lengths it
    came with (each rolled back), the weights read as arguments (no weight-sized constant in
    the HLO); bad counts are refused."""
    from specjax import cache as kv_cache
    from specjax.bench import steps
    from specjax.bench.parallel import SHAPES

    target, params = steps.synthetic_model(SHAPES["tiny"], jnp.float32)
    cache = kv_cache.rollback(target.init_cache(1, 16, jnp.float32), jnp.full((1,), 8, jnp.int32))
    tokens, positions = jnp.ones((1, 3), jnp.int32), 8 + jnp.arange(3)[None]
    loop = steps.step_loop(target, tokens, positions)
    out_cache, _ = loop(params, cache, jnp.int32(3))
    np.testing.assert_array_equal(out_cache.lengths, [8])
    smallest_weight = min(x.size for x in jax.tree.leaves(params) if x.ndim == 2)
    text = loop.lower(params, cache, jnp.int32(3)).as_text()
    assert max(_constant_sizes(text), default=0) < smallest_weight
    assert steps.time_step_in_loop(target, params, batch=1, context=8, T=3, slots=16, calls=2,
                                   repeats=1) > 0  # fmt: skip
    with pytest.raises(ValueError, match="calls and repeats must be >= 1"):
        steps.time_step_in_loop(target, params, batch=1, context=8, T=3, slots=16, calls=0)


def test_call_cost_projection_replays_a_bench_rows_tau():
    """`call_cost.replayed_tau` of a bench row is that row's acceptance τ (tokens per call,
    pooled over its sets), for a chain and for a tree; a projection divides the call's cost
    by it."""
    from specjax.bench import call_cost

    bench = Path(__file__).parents[2] / "docs/benchmarks/h200_trees_s12/bench_realtrees.json"
    rows = {r["name"]: r for r in json.loads(bench.read_text())["rows"] if r["set"] == "all"}
    for name in ("eagle-dv32k", "eagle-dynamic12-dv32k"):
        tau, source = call_cost.replayed_tau(f"{bench}#{name}")
        assert tau == pytest.approx(rows[name]["acceptance_tau"], rel=1e-9)
        assert name in source
    row = call_cost.project({"iteration_ms": 3.0}, 2.0, "x", step_ms=1.2)
    assert row["projected_ms_per_token"] == 1.5 and row["projected_speedup"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="BENCH.json#ROW_NAME"):
        call_cost.replayed_tau(str(bench))


def test_call_breakdown_sums_a_call_by_part_and_kind():
    """Kinds by trace name (a matmul over LM_HEAD_US is an LM head), sums by (part, kind)."""
    long = profile.LM_HEAD_US + 5.0
    call = [
        ["draft", "gemm_fusion_dot_3", 0.0, 16.0],
        ["draft", "gemm_fusion_dot_377", 0.1, long],
        ["draft", "sort_38_1", 0.0, 4.0],
        ["draft", "memcpy32_post", 0.0, 1.0],
        ["draft", "loop_add_fusion", 0.0, 1.5],
        ["draft", "loop_add_fusion", 0.0, 1.5],
        ["verify", "specjax_rope_attention__4", 0.0, 15.0],
        ["verify", "nvjet_sm90_tst_192x128", 0.0, 40.0],
    ]
    assert profile.call_breakdown(call) == [
        ("draft", "LM head", 1, long),
        ("draft", "copy", 1, 1.0),
        ("draft", "matmul", 1, 16.0),
        ("draft", "other", 2, 3.0),
        ("draft", "sort", 1, 4.0),
        ("verify", "LM head", 1, 40.0),
        ("verify", "attention", 1, 15.0),
    ]


def test_main_loop_is_the_last_loop_of_the_program():
    """A loop before the decode loop (a prefill in chunks) whose body launches more kernels
    than the decode loop's: the main loop is still the decode loop, the program's last."""

    def program(x):
        def wide(_, y):  # many kernels per iteration
            for k in range(12):
                y = jnp.sin(y) * (k + 2.0) + jnp.cumsum(y)
            return y

        x = jax.lax.fori_loop(0, jnp.int32(x[0] > 0) + 2, wide, x)
        return jax.lax.while_loop(lambda y: y[0] < 100.0, lambda y: jnp.exp(y) + 1.0, x)

    text = jax.jit(program).lower(jnp.ones((8,))).compile().as_text()
    entry, blocks = kernels.parse(text)
    loops: list[str] = []
    kernels._launches(entry, blocks, loops)
    sizes = [len(kernels._launches(loop, blocks, [])) for loop in loops]
    assert len(loops) == 2 and sizes[0] > sizes[1]  # the first loop is the larger
    body, launches, _, _ = kernels.main_loop(entry, blocks)
    assert body == loops[1] and len(launches) == sizes[1]
