"""Where a decode step's time goes: one step, the autoregressive loop and the speculative loop
of a model shape, each timed, traced with `jax.profiler` and set beside its memory floor.

Dimension legend: B batch, T tokens per call, P prompt tokens, N new tokens, K draft length,
L layers.

For each section of `ProfileSettings.what`:
  * step: one jitted target forward at T = 1 (the decode step), T = K + 1 (verification) and
    T = P (prefill), and the draft's T = 1 step, on a cache holding `context` tokens. The
    cache is donated and rolled back by each call, so the timed program is exactly one step
    with its KV write in place. c = draft step / target step. Each step is also timed in a
    device loop (`<name>_loop_ms`, `steps.time_step_in_loop`): the dispatched figure holds
    the host's dispatch (4.1 ms against 1.5 ms of GPU time for a 1.5B step on an H200), so
    compare verification widths by the loop figure.
  * ar: `specjax.generate` without a drafter, P prompt tokens, N new tokens, greedy.
  * spec: `specjax.generate` with a draft model of `draft_shape` (or, with draft_shape
    "eagle", an untrained EAGLE head of the target's width), gamma K, at temperature 1
    with a verify rule that replays an acceptance histogram (`speedup.forced_acceptance`):
    synthetic weights accept nothing on their own, so speculative figures are projections at
    that acceptance and are labelled so. With `tree`, the loop drafts that token tree and
    verifies greedily: it accepts about nothing, so only its ms per call is a figure.
  * call: one iteration of the spec loop split into drafting, the verification call and
    acceptance + commit (`call_cost.iteration_parts`: C calls of each part in one device
    loop), beside the spec loop's own ms per call when both sections run.
With draft_shape "eagle", `draft_weights` lists settings of the head's weights
(`EagleDrafter.weights`: "float", as the target's dtype; "int8", weight-only int8): the spec
and call sections run once per setting, in this one process beside the one AR loop, as
sections "spec" and "call" for "float" and "spec_<setting>", "call_<setting>" for the others.
Weights are synthetic (hash-initialised on the device, real shapes). ms/token of a loop is
(median wall of the call − the prefill steps' median) / N: compile time and prefill stay out
(on a loaded CPU the difference of two noisy timings can mislead; `ms_per_token_incl_prefill`
is the plain wall time / N beside it).

Each traced call is parsed (`trace.summarize`) into GPU busy time vs wall time, kernels and
copies per token, memcpy share and the top kernels; the compiled loop's HLO (dumped by XLA,
see `experiments/profile.py`) gives kernels per layer exactly (`kernels.loop_kernels`). Both
together give `layer_kernels`: the kernels of the middle layer (L // 2) of the traced program
in schedule order, each with its fusion kind, ops and mean GPU time (`kernels.layer_kernels`;
the spec loop's body may also run the draft, whose layer N is tagged layerN too: then its
kernels are listed with the target's).

Idle time in a trace is not an untraced run's: while a profiler is active XLA runs its
command buffers (CUDA graphs) op by op, unless XLA_FLAGS has
--xla_enable_command_buffers_during_profiling=true, and even then the profiler makes the host's
graph launches slower (an H200 trace of the 12-node tree call showed one 754 µs gap a call
that the untraced wall per call does not have). Judge launch gaps by the untraced ms per call
against the trace's busy time, not by the trace's gaps.

Floor: one step must read every weight and the cached keys/values once:
(weight bytes + KV bytes at the context) / copy bandwidth measured in the same process.

Only APIs that specjax has had since its first GPU benchmarks are used here, so the same file
can profile an older checkout of the package (the "before" of a before/after).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specjax import tables
from specjax.bench.trace import traced_events

SECTIONS = ("step", "ar", "spec", "call")
EAGLE = "eagle"  # draft_shape value: an EAGLE head of the target's width


@dataclasses.dataclass
class ProfileSettings:
    """What to profile (the flags of `experiments/profile.py`).

    Fields:
      shape: target architecture, a key of `specjax.bench.parallel.SHAPES`.
      draft_shape: the spec section's draft ("" = the shape's usual draft in DEFAULT_DRAFTS);
        its vocabulary is set to the target's. "eagle": an EAGLE head (one decoder layer of
        the target's width, random weights) drafts instead; the step section then times no
        draft step (the loop's time says what the head costs).
      draft_vocab: with draft_shape "eagle", draft over this many tokens (0: all; the
        reduced draft vocabulary of `heads.with_draft_vocab`, here the first ids).
      draft_weights: with draft_shape "eagle", the head's weights to time the spec and call
        sections with, each in turn (values of `quantize.DRAFT_WEIGHTS`: "float", "int8").
      what: subset of SECTIONS.
      dtype: weights and KV cache.
      batch: rows decoded together.
      context: prompt tokens P (the cache holds these before the first decode step).
      new_tokens: N, tokens generated per row by the loops.
      gamma: K of the spec section and of the verification step.
      verify_tokens: further verification widths T timed by the step section (`target_T<T>_ms`),
        e.g. a token tree's N + 1: the verification cost curve a tree size pays.
      tree: "" (a chain of gamma drafts) or a token tree for the spec and call sections
        (`tree.parse_tree_spec`: "4,2,1,1", "dynamic:depth=5,top_k=4,nodes=16").
      calls: iterations per timed program of the call section.
      alpha: i.i.d. acceptance replayed by the spec section when `accept_from` is empty.
      accept_from: acceptance histogram to replay (JSON or a runner's generations.jsonl).
      repeats: timed calls after the compile call (median reported).
      trace: also trace one call of each section with jax.profiler.
      label: names this run in tables ("before", "after", ...).
    """

    shape: str = "llama3-8b"
    draft_shape: str = ""
    draft_vocab: int = 0
    draft_weights: Sequence[str] = ("float",)
    what: Sequence[str] = SECTIONS
    dtype: str = "bfloat16"
    batch: int = 1
    context: int = 512
    new_tokens: int = 128
    gamma: int = 4
    verify_tokens: Sequence[int] = ()
    tree: str = ""
    calls: int = 32
    alpha: float = 0.8
    accept_from: str = ""
    repeats: int = 5
    trace: bool = True
    label: str = ""

    def __post_init__(self):
        from specjax.bench.parallel import DEFAULT_DRAFTS, SHAPES

        unknown = sorted(set(self.what) - set(SECTIONS))
        if unknown:
            raise ValueError(f"unknown sections {unknown}; choose from {SECTIONS}")
        draft = self.draft_shape or DEFAULT_DRAFTS.get(self.shape, "")
        if self.draft_vocab and draft != EAGLE:
            raise ValueError("draft_vocab needs draft_shape='eagle'")
        weights = list(self.draft_weights)
        if not weights or len(set(weights)) != len(weights):
            raise ValueError(f"draft_weights must name settings once each, got {weights}")
        if weights != ["float"]:  # older packages (before/after runs) know no other setting
            from specjax.models.quantize import DRAFT_WEIGHTS

            if draft != EAGLE:
                raise ValueError("draft_weights other than float need draft_shape='eagle'")
            unknown = [w for w in weights if w not in DRAFT_WEIGHTS]
            if unknown:
                raise ValueError(
                    f"draft_weights must be among {', '.join(map(repr, DRAFT_WEIGHTS))}, got "
                    + ", ".join(map(repr, unknown))
                )
        for name in (self.shape, draft) if draft and draft != EAGLE else (self.shape,):
            if name not in SHAPES:
                raise ValueError(f"unknown shape {name!r}; known: {', '.join(sorted(SHAPES))}")
        if not draft and "spec" in self.what:
            raise ValueError(f"no default draft shape for {self.shape}: give draft_shape")
        if self.tree:
            from specjax.decoding.tree import parse_tree_spec

            parse_tree_spec(self.tree)  # raises on a malformed tree
        if not draft and "call" in self.what:
            raise ValueError(f"no default draft shape for {self.shape}: give draft_shape")
        for name in ("batch", "context", "new_tokens", "gamma", "repeats", "calls"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(int(T) < 1 for T in self.verify_tokens):
            raise ValueError(f"verify_tokens must be >= 1, got {list(self.verify_tokens)}")


def loop_ms_without_prefill(wall_ms: float, prefill_ms: float) -> float | None:
    """A loop's own ms: the call's wall time less its prefill's, timed apart. None where that
    difference is not positive: the two timings' noise exceeds the loop (a short loop on a
    loaded CPU), and a zero or negative time would be a wrong figure, not a fast one."""
    loop_ms = wall_ms - prefill_ms
    return loop_ms if loop_ms > 0 else None


def _median_s(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(first call s, median of `repeats` further calls s, last output)."""
    from specjax.eval.timing import timed

    out, timing = timed(fn, repeats=repeats)
    return timing.first_s, timing.median_s, out


def _hlo_summary(dump_dir: str | None, module: str, num_layers: int) -> dict[str, Any] | None:
    from specjax.bench import kernels

    if not dump_dir:
        return None
    try:
        path = kernels.find_dump(dump_dir, module)
    except FileNotFoundError as error:
        return {"error": str(error)}
    summary = kernels.loop_kernels(path.read_text(), num_layers)
    summary["file"] = path.name
    return summary


def _layer_kernel_fields(
    dump_dir: str | None, module: str, layer: int, events: Sequence[Any], tokens: int
) -> dict[str, Any]:
    """`kernels.layer_kernels` of layer `layer` of the module's dumped HLO, timed by the
    traced `events`; {} without a dump (or with no HLO of that module in it)."""
    from specjax.bench import kernels, trace

    if not dump_dir:
        return {}
    try:
        path = kernels.find_dump(dump_dir, module)
    except FileNotFoundError:
        return {}  # `hlo` already says so
    durations = trace.durations_by_name(events)
    return kernels.layer_kernels(path.read_text(), layer, durations, tokens=tokens)


def _phase_fields(
    dump_dir: str | None, module: str, events: Sequence[Any], calls: int
) -> dict[str, Any]:
    """{"phases": `kernels.phase_times`, "phase_timeline": `kernels.phase_timeline`} of a
    speculative loop's trace: its GPU time per call split into draft / verify / accept /
    commit, by kernel name and by the events' order; {} without a dump or events."""
    from specjax.bench import kernels, trace
    from specjax.decoding.speculative import PHASES

    if not dump_dir or not events:
        return {}
    try:
        path = kernels.find_dump(dump_dir, module)
    except FileNotFoundError:
        return {}
    hlo = kernels.parse(path.read_text())
    durations = trace.durations_by_name(events)
    return {
        "phases": kernels.phase_times(hlo, durations, PHASES, calls=calls),
        "phase_timeline": kernels.phase_timeline(hlo, events, PHASES, calls=calls),
    }


def _kernel_policies(dtype: Any) -> dict[str, Any] | None:
    """`layers.kernel_policies(dtype)`; profile_before_after.sh also runs this module against
    older packages, which have no such function (None) or one without the dtype argument."""
    from specjax.models import layers

    policies = getattr(layers, "kernel_policies", None)
    if policies is None:
        return None
    try:
        return policies(dtype)
    except TypeError:
        return policies()


def floor_ms(params, config, *, batch: int, context: int, bandwidth: float) -> float:
    """Bytes one decode step must read (every weight as stored, every cached key/value) /
    bandwidth (`steps.floor_ms` counts the weights from the config instead)."""
    from specjax.bench import steps as step_lib

    weight_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    itemsize = jnp.dtype(jax.tree.leaves(params)[0].dtype).itemsize
    kv_bytes = step_lib.kv_bytes_read(config, batch, context, itemsize)
    return 1e3 * (weight_bytes + kv_bytes) / bandwidth


def _draft_fields(drafter: tuple[Any, Any], weights: str, dtype: Any) -> dict[str, Any]:
    """For an EAGLE head: {"draft_weights": its setting, "draft_weight_bytes": the bytes of
    its weights as it drafts with them (`decode_params`: decode layout, `weights` applied),
    the head and its draft vocabulary's LM head slice, not the target's arrays it shares};
    {} for other drafters."""
    head_drafter, head_params = drafter
    if getattr(head_drafter, "kind", "") != "eagle" or not hasattr(head_drafter, "decode_params"):
        return {}
    decoded = head_drafter.decode_params(head_params, dtype)
    own = [decoded["head"]]
    if decoded["io"].get("draft_ids") is not None:
        own.append(decoded["io"]["draft_head"])
    return {
        "draft_weights": weights,
        "draft_weight_bytes": int(sum(leaf.nbytes for leaf in jax.tree.leaves(own))),
    }


def _accept_probs(settings: ProfileSettings) -> tuple[list[float], str]:
    from specjax.bench import speedup

    if settings.accept_from:
        from specjax.bench.parallel import load_acceptance

        acceptance = load_acceptance(settings.accept_from, settings.gamma)
        return [float(p) for p in acceptance.probs], acceptance.source
    probs = speedup.geometric_accept_probs(settings.alpha, settings.gamma)
    return [float(p) for p in probs], f"i.i.d. alpha={settings.alpha} (assumed)"


def run(
    settings: ProfileSettings,
    out_dir: str | Path,
    *,
    dump_dir: str | None = None,
    bandwidth: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Profiles `settings` and writes <out_dir>/profile_<label>_<shape>.json; returns it."""
    import specjax
    from specjax.bench import speedup
    from specjax.bench import steps as step_lib
    from specjax.bench.parallel import DEFAULT_DRAFTS, SHAPES
    from specjax.decoding.sampling import Sampling

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = settings
    config = SHAPES[s.shape]
    dtype = jnp.dtype(s.dtype)
    bandwidth_source = "given"
    if bandwidth is None:
        bandwidth = step_lib.measure_copy_bandwidth(4e9 if jax.default_backend() != "cpu" else 1e8)
        bandwidth_source = "measured (device copy, this process)"
    result: dict[str, Any] = {
        "label": s.label,
        "settings": dataclasses.asdict(s),
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "specjax_path": os.path.dirname(specjax.__file__),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "kernels": _kernel_policies(dtype),
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "bandwidth_source": bandwidth_source,
        "sections": {},
    }
    path = out_dir / f"profile_{s.label or 'run'}_{s.shape}.json"

    def save():
        from specjax.fileio import atomic_write

        atomic_write(path, json.dumps(result, indent=1, default=str))

    log(f"[{s.label}] {s.shape}: creating synthetic {s.dtype} weights")
    target, params = step_lib.synthetic_model(config, dtype)
    floor = floor_ms(params, config, batch=s.batch, context=s.context, bandwidth=bandwidth)
    result["floor_ms"] = floor
    result["weight_bytes"] = int(sum(leaf.nbytes for leaf in jax.tree.leaves(params)))
    P, N, K, B = s.context, s.new_tokens, s.gamma, s.batch
    slots = P + N + K + 1
    trace_root = Path(tempfile.mkdtemp(prefix="specjax_trace_"))
    middle_layer = config.num_layers // 2  # the layer whose kernels are listed one by one

    draft = draft_params = None
    draft_shape = s.draft_shape or DEFAULT_DRAFTS.get(s.shape, "")
    drafts = "spec" in s.what or "call" in s.what
    if draft_shape == EAGLE and drafts:
        from specjax.drafters import heads

        draft, draft_params = heads.init_eagle(target, params, param_dtype=dtype)
        if s.draft_vocab:
            draft_params = heads.with_draft_vocab(draft_params, range(s.draft_vocab))
        result["draft_shape"] = EAGLE + (f" (draft vocab {s.draft_vocab})" if s.draft_vocab else "")
    elif draft_shape and draft_shape != EAGLE and (drafts or "step" in s.what):
        draft_config = SHAPES[draft_shape].replace(vocab_size=config.vocab_size)
        draft, draft_params = step_lib.synthetic_model(draft_config, dtype)
        result["draft_shape"] = draft_shape

    # Prefill is subtracted from the loops' wall time: always measure it.
    prefill_ms = step_lib.time_prefill(
        target, params, batch=B, width=P, slots=slots, repeats=s.repeats
    )
    draft_prefill_ms = None
    if "spec" in s.what and draft_shape == EAGLE:
        draft_prefill_ms = 0.0  # the head catches up inside the loop's first iteration
    elif "spec" in s.what:
        draft_prefill_ms = step_lib.time_prefill(
            draft, draft_params, batch=B, width=P, slots=slots, repeats=s.repeats
        )

    if "step" in s.what:
        section: dict[str, Any] = {"prefill_ms": prefill_ms}
        steps_to_time = {
            "target_T1": (target, params, 1),
            "target_verify": (target, params, K + 1),
        }
        if draft is not None and draft_shape != EAGLE:
            steps_to_time["draft_T1"] = (draft, draft_params, 1)
        for T in sorted({int(T) for T in s.verify_tokens}):
            steps_to_time[f"target_T{T}"] = (target, params, T)
        step_events: list[Any] = []  # the target_T1 trace's, for its layer's kernels
        for name, (model, weights, T) in steps_to_time.items():
            median_ms, first_s, again = step_lib.time_step(
                model, weights, batch=B, context=P, T=T, slots=max(slots, P + T + 1),
                repeats=s.repeats, tag=f"{s.shape}_{name}".replace(".", "_").replace("-", "_"),
            )  # fmt: skip
            section[f"{name}_ms"] = median_ms
            section[f"{name}_first_s"] = first_s
            # The same step in a device loop: what the GPU spends, dispatch left out.
            section[f"{name}_loop_ms"] = step_lib.time_step_in_loop(
                model, weights, batch=B, context=P, T=T, slots=max(slots, P + T + 1),
                repeats=s.repeats,
            )  # fmt: skip
            if name in ("target_T1", "draft_T1") and s.trace:

                def steps(again=again):  # ten steps in one trace: per-step figures
                    return [again() for _ in range(10)]

                traced, events = traced_events(
                    steps, trace_root / f"step_{name}", tokens=10, num_layers=config.num_layers
                )
                section["trace" if name == "target_T1" else "draft_trace"] = traced
                if name == "target_T1":
                    step_events = events
            log(
                f"[{s.label}] {s.shape} step {name}: {median_ms:.3f} ms dispatched, "
                f"{section[f'{name}_loop_ms']:.3f} ms in a device loop (first {first_s:.1f} s)"
            )
        if "draft_T1_ms" in section:
            section["c"] = section["draft_T1_ms"] / section["target_T1_ms"]
        if "draft_trace" in section and section["trace"].get("device_events"):
            # c from GPU busy time per step: host dispatch of one jitted step, which the
            # timings above include, would dominate small models.
            section["c_device"] = (
                section["draft_trace"]["busy_ms_per_token"] / section["trace"]["busy_ms_per_token"]
            )
        section["x_floor"] = section["target_T1_ms"] / floor
        step_module = f"profile_step_{s.shape}_target_T1".replace(".", "_").replace("-", "_")
        section["hlo"] = _hlo_summary(dump_dir, step_module, config.num_layers)
        if s.trace:
            section.update(
                _layer_kernel_fields(dump_dir, step_module, middle_layer, step_events, tokens=10)
            )
        result["sections"]["step"] = section
        save()

    prompt = np.random.default_rng(0).integers(0, config.vocab_size, size=(B, P)).tolist()
    # The draft once per setting of its weights (`draft_weights`; "float" alone, the draft
    # as built, unless asked): section "spec" / "call" for "float", "spec_int8" ... otherwise.
    weight_settings = {
        weights: (draft if weights == "float" else dataclasses.replace(draft, weights=weights))
        for weights in s.draft_weights
    }

    def suffix(weights: str) -> str:
        return "" if weights == "float" else f"_{weights}"

    loops: dict[str, dict[str, Any]] = {}
    if "ar" in s.what:
        loops["ar"] = dict(drafter=None, kwargs={}, prefill_ms=prefill_ms, module="_autoregressive")
    for weights, drafter in weight_settings.items() if "spec" in s.what else ():
        if s.tree:
            loops["spec" + suffix(weights)] = dict(
                drafter=(drafter, draft_params),
                kwargs=dict(tree=s.tree),
                prefill_ms=prefill_ms + draft_prefill_ms,
                module="_tree",
                acceptance="none replayed: greedy on synthetic weights, so ms per call is the "
                "figure",
                accept_length_probs=None,
                draft_weights=weights,
            )
            continue
        probs, source = _accept_probs(s)
        loops["spec" + suffix(weights)] = dict(
            drafter=(drafter, draft_params),
            kwargs=dict(
                sampling=Sampling.create(1.0),
                gamma=K,
                verify_fn=speedup.forced_acceptance(probs),
            ),
            prefill_ms=prefill_ms + draft_prefill_ms,
            module="_speculative",
            acceptance=source,
            accept_length_probs=probs,
            draft_weights=weights,
        )
    for name, loop in loops.items():

        def call(loop=loop):
            return specjax.generate(
                # The prompt is P tokens: a bucket of 1 pads nothing and compiles one prefill
                # width (`sequence.prefill_widths`), as `time_prefill` runs it.
                (target, params), loop["drafter"], prompt, max_new_tokens=N, prompt_bucket=1,
                **loop["kwargs"],
            )  # fmt: skip

        first_s, median_s, out = _median_s(call, s.repeats)
        generated = int(np.min(np.asarray(out.num_generated)))
        iterations = int(np.asarray(out.steps))
        loop_ms = loop_ms_without_prefill(1e3 * median_s, loop["prefill_ms"])
        ms_per_token = None if loop_ms is None else loop_ms / generated
        section = {
            # What HF and older benchmarks report: wall time per token, prefill included.
            "ms_per_token_incl_prefill": 1e3 * median_s / generated,
            "wall_ms": 1e3 * median_s,
            "first_s": first_s,
            "compile_s": max(first_s - median_s, 0.0),
            "prefill_ms": loop["prefill_ms"],
            "new_tokens": generated,
            "ms_per_token": ms_per_token,
            "x_floor": None if ms_per_token is None else ms_per_token / floor,
            "iterations": iterations,
            # One verification call with its drafting and commit (what a tree is judged by).
            "ms_per_call": None if loop_ms is None else loop_ms / max(iterations, 1),
        }
        speculative = name != "ar"
        if speculative:
            section.update(
                tau=float(out.tau),
                acceptance=loop["acceptance"],
                accept_length_probs=loop["accept_length_probs"],
                projected="yes: synthetic weights with a replayed acceptance",
            )
            section.update(_draft_fields(loop["drafter"], loop["draft_weights"], dtype))
        events: list[Any] = []
        if s.trace:
            section["trace"], events = traced_events(
                call, trace_root / name, tokens=generated, num_layers=config.num_layers
            )
        section["hlo"] = _hlo_summary(dump_dir, loop["module"], config.num_layers)
        if s.trace:
            section.update(
                _layer_kernel_fields(dump_dir, loop["module"], middle_layer, events, generated)
            )
            if speculative:
                section.update(
                    _phase_fields(dump_dir, loop["module"], events, section["iterations"])
                )
        result["sections"][name] = section
        if ms_per_token is None:
            log(
                f"[{s.label}] {s.shape} {name}: the call's wall time ({1e3 * median_s:.3f} ms) is "
                f"not above the prefill's ({loop['prefill_ms']:.3f} ms): timing noise exceeds "
                "the loop, so it has no ms/token; raise --new_tokens or --repeats"
            )
        else:
            log(
                f"[{s.label}] {s.shape} {name}: {ms_per_token:.3f} ms/token "
                f"({ms_per_token / floor:.2f}x floor {floor:.3f} ms), "
                f"compile {section['compile_s']:.1f} s"
            )
        save()
    for weights, drafter in weight_settings.items() if "call" in s.what else ():
        from specjax.bench import call_cost
        from specjax.decoding.tree import parse_tree_spec

        name = "call" + suffix(weights)
        shape = call_cost.CallShape(gamma=K, tree=parse_tree_spec(s.tree) if s.tree else None)
        drafter, drafter_params = specjax.api.as_drafter((drafter, draft_params))
        section = call_cost.iteration_parts(
            target, params, drafter, drafter_params, batch=B, context=P, shape=shape,
            calls=s.calls, repeats=s.repeats,
        )  # fmt: skip
        section.update(_draft_fields((drafter, drafter_params), weights, dtype))
        spec_section = result["sections"].get("spec" + suffix(weights))
        if spec_section:
            section["loop_ms_per_call"] = spec_section["ms_per_call"]
        result["sections"][name] = section
        log(
            f"[{s.label}] {s.shape} {name} ({section['verified_tokens']} verified tokens): draft "
            f"{section['draft_ms']:.3f} + verify {section['verify_ms']:.3f} + accept/commit "
            f"{section['accept_commit_ms']:.3f} = {section['iteration_ms']:.3f} ms"
        )
        save()
    if "ar" in loops and not s.tree:
        ar = result["sections"]["ar"]
        for weights in weight_settings if "spec" in s.what else ():
            spec = result["sections"]["spec" + suffix(weights)]
            timed = ar["ms_per_token"] is not None and spec["ms_per_token"] is not None
            spec["speedup_vs_ar"] = ar["ms_per_token"] / spec["ms_per_token"] if timed else None
    save()
    result["json"] = str(path)
    return result


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt3(value: Any) -> str:
    return _fmt(value, 3)


def run_label(result: dict[str, Any], section: str) -> str:
    """A run's name in the tables of its spec and call sections: its label, and the draft's
    weights for a section of another setting than float ("spec_int8": "<label> (int8
    draft)"), so that one run's settings stand side by side."""
    _, _, weights = section.partition("_")
    return f"{result['label']} ({weights} draft)" if weights else result["label"]


def summary_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run, section): the figures of the before/after tables."""
    rows = []
    for r in results:
        for name, sec in r["sections"].items():
            if name == "call" or name.startswith("call_"):  # per call: `call_table`
                continue
            tr = sec.get("trace") or {}
            hlo = sec.get("hlo") or {}
            per_token = sec.get("ms_per_token", sec.get("target_T1_ms"))
            rows.append(
                {
                    "run": r["label"],
                    "shape": r["settings"]["shape"],
                    "section": name,
                    "ms": per_token,
                    "device_ms": tr.get("busy_ms_per_token"),
                    "floor_ms": r["floor_ms"],
                    "x_floor": per_token / r["floor_ms"] if per_token else None,
                    "busy_share": tr.get("busy_share_of_wall"),
                    "kernels_per_token": tr.get("kernels_per_token"),
                    "kernels_per_layer_hlo": hlo.get("kernels_per_layer"),
                    "memcpy_share": tr.get("memcpy_share"),
                    "memcpy_per_token": tr.get("memcpy_per_token"),
                    "c": sec.get("c_device", sec.get("c")),
                    "speedup_vs_ar": sec.get("speedup_vs_ar"),
                    "compile_s": sec.get("compile_s", sec.get("target_T1_first_s")),
                }
            )
    return rows


COLUMNS = (
    "run", "shape", "section", "ms", "device_ms", "floor_ms", "x_floor", "busy_share",
    "kernels_per_token", "kernels_per_layer_hlo", "memcpy_share", "memcpy_per_token", "c",
    "speedup_vs_ar", "compile_s",
)  # fmt: skip


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """The before/after table and each run's top kernels. ms: per token for the loops
    (prefill subtracted), per call for `step` (host dispatch included); device_ms: GPU busy
    time per token / per step from the trace."""
    rows = summary_rows(results)
    lines = [tables.markdown(COLUMNS, ([row[c] for c in COLUMNS] for row in rows), _fmt3)]
    if any(name.startswith("call") for r in results for name in r["sections"]):
        lines += ["", call_table(results)]
    if any("draft_weights" in sec for r in results for sec in r["sections"].values()):
        lines += ["", draft_weights_table(results)]
    for r in results:
        for name, sec in r["sections"].items():
            top = (sec.get("trace") or {}).get("top_kernels")
            if not top:
                continue
            lines += [
                "",
                f"Top kernels: {r['label']} {r['settings']['shape']} {name}",
                "",
                tables.markdown(
                    ("kernel", "count", "total ms", "share", "mean µs"),
                    (
                        (
                            f"`{k['name'][:70]}`",
                            k["count"],
                            f"{k['total_ms']:.3f}",
                            f"{k['share']:.3f}",
                            f"{k['mean_us']:.1f}",
                        )
                        for k in top
                    ),
                ),  # fmt: skip
            ]
    if any(sec.get("phases") for r in results for sec in r["sections"].values()):
        lines += ["", phase_table(results)]
    if any("idle_ms_per_call" in (sec.get("phase_timeline") or {})
           for r in results for sec in r["sections"].values()):  # fmt: skip
        lines += ["", idle_table(results)]
    for r in results:
        for name, sec in r["sections"].items():
            if (sec.get("phase_timeline") or {}).get("kernels"):
                lines += ["", part_kernel_table(sec["phase_timeline"], run_label(r, name))]
            if (sec.get("phase_timeline") or {}).get("largest_gaps"):
                lines += ["", gap_table(sec["phase_timeline"], run_label(r, name))]
    for r in results:
        for name, sec in r["sections"].items():
            if sec.get("layer_kernels"):
                lines += [
                    "",
                    layer_kernel_table(sec, f"{r['label']} {r['settings']['shape']} {name}"),
                ]
    return "\n".join(lines)


def draft_weights_table(results: Sequence[dict[str, Any]]) -> str:
    """The EAGLE head's weights per spec and call section: setting, MB read per draft step
    (`_draft_fields`), ms per call of the loop, and drafting ms of the call split."""
    rows = [
        (r["label"], name, sec["draft_weights"], sec["draft_weight_bytes"] / 1e6,
         sec.get("ms_per_call"), sec.get("draft_ms"))
        for r in results
        for name, sec in r["sections"].items()
        if "draft_weights" in sec
    ]  # fmt: skip
    columns = ("run", "section", "draft weights", "draft MB", "ms per call", "draft ms")
    return "\n".join(
        [
            "The EAGLE head's weights as it drafts with them (head + draft vocabulary's LM "
            "head slice; MB each draft step reads)",
            "",
            tables.markdown(columns, rows, _fmt3),
        ]
    )


def layer_kernel_table(section: dict[str, Any], title: str) -> str:
    """A section's `layer_kernels` as a titled table: each kernel of the layer in schedule
    order with its fusion kind, ops and mean GPU time (µs, "–" when the trace has no event of
    it), the trace name the time comes from, and a last row with their sum."""
    rows = [
        (f"`{k['name']}`", k["kind"], k["ops"], _fmt(k["mean_us"]), k["trace_name"] or "–")
        for k in section["layer_kernels"]
    ]
    unmatched = section["layer_kernels_unmatched"]
    rows.append(("sum", "", "", _fmt(section["layer_kernels_us_sum"]), f"{unmatched} unmatched"))
    return "\n".join(
        [
            f"Layer {section['layer_kernels_layer']} kernels: {title}",
            "",
            tables.markdown(("kernel", "kind", "ops", "mean µs", "trace name"), rows),
        ]
    )


def call_parts(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Run label -> {part: GPU ms per call} of each traced speculative loop: the split by
    order (`phase_timeline`) where the profile has it, else by name with the unnamed
    kernels (and prefill) as "outside"."""
    from specjax.decoding.speculative import PHASES

    runs = {}
    for r in results:
        for name, sec in r["sections"].items():
            timeline, by_name = sec.get("phase_timeline"), sec.get("phases")
            found = timeline or by_name
            if not found:
                continue
            parts = {p: found["per_call_ms"][p] for p in (*PHASES, "unscoped")}
            parts["outside"] = (
                timeline["outside_ms_per_call"] if timeline else by_name["other_ms_per_call"]
            )
            runs[run_label(r, name)] = parts
    return runs


def part_kernel_table(timeline: dict[str, Any], label: str, per_part: int = 12) -> str:
    """Each part's heaviest kernels of a `kernels.phase_timeline` split: µs per call, events
    per call, mean µs, and "placed" for a name no HLO instruction carries."""
    rows = [
        (part, f"`{k['name'][:70]}`", f"{k['us_per_call']:.1f}", f"{k['per_call']:.2f}",
         f"{k['mean_us']:.1f}", "placed" if k["placed"] else "")
        for part, found in timeline["kernels"].items()
        for k in found[:per_part]
    ]  # fmt: skip
    columns = ("part", "kernel", "µs per call", "per call", "mean µs", "by order")
    return "\n".join(
        [f"Kernels of each part, by order: {label}", "", tables.markdown(columns, rows)]
    )


def idle_table(results: Sequence[dict[str, Any]]) -> str:
    """The GPU's idle ms per call by part (`kernels.phase_timeline`'s gap before each
    kernel), beside each part's busy ms."""
    from specjax.decoding.speculative import PHASES

    labels = [*PHASES, "unscoped"]
    body = []
    for r in results:
        for name, sec in r["sections"].items():
            timeline = sec.get("phase_timeline") or {}
            idle = timeline.get("idle_ms_per_call")
            if not idle:
                continue
            busy = timeline["per_call_ms"]
            body.append(
                (run_label(r, name), r["settings"].get("tree") or "chain")
                + tuple(f"{busy[p]:.3f} / {idle[p]:.3f}" for p in labels)
                + (f"{idle['outside']:.3f}", f"{sum(busy.values()):.3f}",
                   f"{sum(idle[p] for p in labels):.3f}", sec.get("ms_per_call"))
            )  # fmt: skip
    columns = ("run", "drafts", *labels, "outside idle", "busy", "idle", "wall ms")
    return "\n".join(
        [
            "GPU busy / idle ms per call by part (by order; idle: the gap before each of the "
            "part's kernels, nothing of any stream running)",
            "",
            tables.markdown(columns, body, _fmt3),
        ]
    )


def one_call_tables(result: dict[str, Any]) -> str:
    """Each traced speculative loop's middle call (`phase_timeline`'s "one_call"), its events
    in the order they ran: part, kernel, idle µs before it, µs. Empty when none was kept."""
    found = []
    for name, sec in result["sections"].items():
        events = (sec.get("phase_timeline") or {}).get("one_call")
        if not events:
            continue
        rows = [
            (i, part, f"`{kernel[:70]}`", f"{gap:.2f}", f"{us:.2f}")
            for i, (part, kernel, gap, us) in enumerate(events)
        ]
        busy, idle = sum(e[3] for e in events), sum(e[2] for e in events)
        found.append(
            "\n".join([
                f"One call in order: {result['label']} {name} ({len(events)} events, "
                f"{busy:.1f} µs of kernels, {idle:.1f} µs idle before them)",
                "",
                tables.markdown(("#", "part", "kernel", "idle µs before", "µs"), rows),
            ])
        )  # fmt: skip
    return "\n\n".join(found)


# A matmul kernel longer than this (µs) in a decode call reads an LM head (at the 1.5B
# shape: 25 µs for a 32k-token draft head, 110 µs for the target's; a layer's largest matmul
# takes 16 µs). A heuristic for `call_breakdown`'s table, named so.
LM_HEAD_US = 20.0


def kernel_kind(name: str, us: float) -> str:
    """A kernel's kind by its trace name: "LM head" (a matmul over LM_HEAD_US), "matmul",
    "attention", "sort", "copy" or "other"."""
    if name.startswith(("gemm", "nvjet", "sm90_xmma", "cutlass")):
        return "LM head" if us > LM_HEAD_US else "matmul"
    if "attention" in name:
        return "attention"
    if name.startswith("sort"):
        return "sort"
    if "memcpy" in name.lower():
        return "copy"
    return "other"


def call_breakdown(one_call: Sequence[Sequence[Any]]) -> list[tuple[str, str, int, float]]:
    """(part, kernel kind, kernels, µs) of one call's events ([part, name, gap, µs], as
    `kernels.phase_timeline` keeps them), by part then kind."""
    found: dict[tuple[str, str], list] = {}
    for part, name, _, us in one_call:
        entry = found.setdefault((part, kernel_kind(name, us)), [0, 0.0])
        entry[0] += 1
        entry[1] += us
    return [(part, kind, n, us) for (part, kind), (n, us) in sorted(found.items())]


def gap_table(timeline: dict[str, Any], label: str) -> str:
    """The largest idle gaps of a `kernels.phase_timeline` split, by the kernels around them."""
    from specjax.bench.kernels import LARGE_GAP_US

    rows = [
        (f"`{g['before'][:60]}`", f"`{g['after'][:60]}`", f"{g['per_call']:.2f}",
         f"{g['mean_us']:.1f}", f"{g['us_per_call']:.1f}")
        for g in timeline["largest_gaps"]
    ]  # fmt: skip
    columns = ("kernel before", "kernel after", "per call", "mean µs", "µs per call")
    return "\n".join(
        [f"Idle gaps of at least {LARGE_GAP_US:g} µs: {label}", "",
         tables.markdown(columns, rows)]
    )  # fmt: skip


def phase_table(results: Sequence[dict[str, Any]]) -> str:
    """GPU ms (and kernels) per call of each traced speculative loop, by part of the
    iteration (`kernels.phase_times`)."""
    from specjax.decoding.speculative import PHASES

    labels = [*PHASES, "unscoped"]

    def row(lead, split, aside, outside, wall):
        """One split's cells: ms (kernels) per part, their sum, then the given columns."""
        ms, count = split["per_call_ms"], split["kernels_per_call"]
        return (
            lead + tuple(f"{ms[p]:.3f} ({count[p]:.0f})" for p in labels)
            + (f"{sum(ms.values()):.3f}", aside, f"{outside:.3f}", wall)
        )  # fmt: skip

    body = []
    for r in results:
        for name, sec in r["sections"].items():
            found = sec.get("phases")
            if not found:
                continue

            settings = r["settings"]
            drafts = settings.get("tree") or "chain"
            lead = (run_label(r, name), settings["shape"], drafts, "by name")
            body.append(row(lead, found, f"{found['shared_ms_per_call']:.3f}",
                            found["other_ms_per_call"], sec.get("ms_per_call")))  # fmt: skip
            timeline = sec.get("phase_timeline")
            if timeline:
                placed = f"{timeline['inferred_ms_per_call']:.3f} placed"
                body.append(row(("", "", "", "by order"), timeline, placed,
                                timeline["outside_ms_per_call"], ""))  # fmt: skip
    columns = (
        "run", "shape", "drafts", "split", *labels, "sum", "shared / placed", "outside",
        "wall ms",
    )  # fmt: skip
    return "\n".join(
        [
            "GPU ms per call by part of the iteration (kernels per call). By name: each "
            "kernel by the HLO launches named like it; 'shared': kernels several parts "
            "launch, split by launch count; 'outside': prefill, library kernels (XLA's top-k, "
            "cuBLAS), copies. By order: those placed in the part running around them "
            "('placed'), prefill alone outside.",
            "",
            tables.markdown(columns, body, _fmt3),
        ]
    )


CALL_COLUMNS = (
    "run", "shape", "drafts", "verified tokens", "draft ms", "verify ms", "accept+commit ms",
    "iteration ms", "loop ms per call",
)  # fmt: skip


def call_table(results: Sequence[dict[str, Any]]) -> str:
    """ms per speculative call split into its parts (the call sections of `results`)."""
    body = []
    for r in results:
        for name, sec in r["sections"].items():
            if name == "call" or name.startswith("call_"):
                body.append(_call_row(r, name, sec))
    return "\n".join(
        ["ms per call (device loops of C calls)", "", tables.markdown(CALL_COLUMNS, body, _fmt3)]
    )


def _call_row(r: dict[str, Any], name: str, sec: dict[str, Any]) -> tuple:
    """One row of `call_table`: a call section's parts."""
    st = r["settings"]
    return (
        run_label(r, name), st["shape"], st.get("tree") or f"chain, gamma {st['gamma']}",
        sec["verified_tokens"], sec["draft_ms"], sec["verify_ms"], sec["accept_commit_ms"],
        sec["iteration_ms"], sec.get("loop_ms_per_call"),
    )  # fmt: skip
