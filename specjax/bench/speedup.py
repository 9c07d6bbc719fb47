"""Benchmark harness: speculative vs autoregressive decoding, step costs and the memory floor.

Dimension legend: B batch, T tokens per call, S cache slots, K draft length (gamma),
V vocab, L layers, G kv heads, Dh head dim.

Every speed figure here is measured the same way: a jitted program is called once (trace +
compile + run, reported as `compile_s`), then `repeats` more times; the median of those is
the steady-state time. Speedups are ratios of two such medians taken in one process on the
same prompts. Greedy speculative outputs are checked against the autoregressive ones.

Used by `experiments/bench.py` on the GPU and by a smoke test on the CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import specjax
from specjax import tables
from specjax.bench import trace
from specjax.bench.steps import floor_ms, step_costs, synthetic_model
from specjax.decoding import rejection
from specjax.decoding.sampling import Sampling
from specjax.drafters import registry
from specjax.eval.timing import timed
from specjax.models.config import ModelConfig
from specjax.models.transformer import Model, Params, params_dtype


def forced_acceptance(accept_length_probs: Sequence[float]) -> Callable[..., Any]:
    """A verify rule that ignores the models and accepts n draft tokens with probability
    accept_length_probs[n] (n = 0..K), i.i.d. per row and step: it replays the acceptance
    statistics recorded on a real pair, so that synthetic-weight models of real shapes give
    *projected* speedups. The emitted tokens are meaningless; only the timing is."""
    probs = np.asarray(accept_length_probs, np.float64)
    log_probs = jnp.asarray(np.log(np.maximum(probs / probs.sum(), 1e-30)), jnp.float32)

    def verify(rng, draft_tokens_BxK, draft_probs_BxKxV, target_probs_BxK1xV):
        del draft_probs_BxKxV
        B, K = draft_tokens_BxK.shape
        if log_probs.shape[0] != K + 1:
            raise ValueError(f"acceptance histogram has {log_probs.shape[0]} bins, need {K + 1}")
        num_accepted_B = jax.random.categorical(rng, log_probs, shape=(B,)).astype(jnp.int32)
        next_B = jnp.argmax(target_probs_BxK1xV[:, -1], axis=-1).astype(jnp.int32)
        return num_accepted_B, next_B

    return verify


def geometric_accept_probs(alpha: float, gamma: int) -> np.ndarray:
    """P(n accepted) under i.i.d. acceptance alpha (Leviathan et al.'s assumption)."""
    n = np.arange(gamma + 1)
    probs = alpha**n * (1 - alpha)
    probs[gamma] = alpha**gamma
    return probs


# What a row of an untimed run carries instead of speeds (repeats=0, an exactness run: the
# only call per prompt includes compilation). Copied into rows, never changed.
UNTIMED = {"timed": False, "speedup": None, "ms_per_token": None, "tokens_per_s": None}


@dataclasses.dataclass
class DecodeResult:
    """One timed configuration (per-call medians; compile separate)."""

    name: str
    batch: int
    gamma: int
    temperature: float
    compile_s: float
    median_s: float
    tokens: int  # generated tokens per call, all rows
    tau: float  # tokens emitted per verification call (GenerateOutput.tau)
    acceptance_tau: float  # accepted drafts + 1 per call, before EOS/budget cuts
    alpha: list[float]
    # The counts behind tau and alpha (so that results pool exactly): verification calls,
    # and accepted and rejected drafts per draft position (`DecodeStats`), summed over rows.
    verify_calls: int = 0
    accepted_per_position: list[int] = dataclasses.field(default_factory=list)
    rejected_per_position: list[int] = dataclasses.field(default_factory=list)
    token_lists: list[list[int]] = dataclasses.field(repr=False, default_factory=list)
    from_draft: list[list[bool]] = dataclasses.field(repr=False, default_factory=list)
    # With a trace_dir: the device-time summary of one traced call (`trace.summarize`, plus
    # per-verification-call figures); None otherwise.
    trace: dict[str, Any] | None = dataclasses.field(repr=False, default=None)

    @property
    def ms_per_token(self) -> float:
        """Wall time per generated token of one row (batch rows decode in parallel)."""
        return 1e3 * self.median_s / (self.tokens / self.batch)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.median_s

    def row(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("token_lists")
        d.pop("from_draft")
        if d["trace"] is None:
            d.pop("trace")
        d.update(ms_per_token=self.ms_per_token, tokens_per_s=self.tokens_per_s)
        return d


def time_generate(
    name: str,
    target,
    drafter,
    prompts: Sequence[Sequence[int]],
    *,
    gamma: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    repeats: int = 5,
    eos_ids: Sequence[int] = (),
    verify_fn=rejection.verify_sampling,
    return_output: bool = False,
    trace_dir: str | os.PathLike | None = None,
    **generate_kwargs: Any,
) -> DecodeResult | tuple[DecodeResult, Any]:
    """Times `specjax.generate` (compile separate, median of repeats); `generate_kwargs`
    (tree=, adaptive_gamma=, prompt_bucket=, ...) go to `specjax.generate` unchanged.
    With `return_output`, also returns the last call's GenerateOutput. With `trace_dir`, one
    more call runs under `jax.profiler` (after the timed ones, so it changes no timing) and
    `result.trace` holds its device-time summary (`trace_call`)."""
    sampling = Sampling.create(temperature)

    def run(seed=0):
        return specjax.generate(
            target, drafter, prompts, sampling=sampling, gamma=gamma,
            max_new_tokens=max_new_tokens, eos_ids=eos_ids, seed=seed, verify_fn=verify_fn,
            **generate_kwargs,
        )  # fmt: skip

    out, timing = timed(run, repeats=repeats)
    result = _result(
        name, drafter, gamma, temperature, timing.compile_s, timing.median_s, out, len(prompts)
    )
    if trace_dir is not None:
        folder = f"{name}_b{len(prompts)}_T{temperature:g}"
        result.trace = trace_call(run, os.path.join(trace_dir, _slug(folder)), target[0], out)
    return (result, out) if return_output else result


def _slug(text: str) -> str:
    """`text` as one folder name: every run of characters other than [A-Za-z0-9._-] -> "_"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def trace_call(run: Callable[[], Any], trace_dir: str, target: Model, out) -> dict[str, Any]:
    """One call of `run` (compiled already) under `jax.profiler`: `trace.summarize` of its
    device events (busy vs wall ms, kernels and memcpy per token, the top kernels), plus the
    same per verification call (`iterations`: the loop's iterations; the autoregressive loop
    counts one per token), which is what a drafter's fixed cost is paid per. Per-token
    figures are per generated token of one row, as `ms_per_token`. On a CPU the trace has no
    device events and the summary says so (`note`)."""
    tokens = int(np.max(np.asarray(out.num_generated)))
    summary, _ = trace.traced_events(
        run, trace_dir, tokens=tokens, num_layers=target.config.num_layers
    )
    iterations = int(np.asarray(out.steps))
    summary["iterations"] = iterations
    if summary.get("device_events"):
        summary["kernels_per_iteration"] = summary["kernels"] / max(iterations, 1)
        summary["busy_ms_per_iteration"] = summary["busy_ms"] / max(iterations, 1)
    return summary


def _summed_over_rows(counts_BxK: Any, drafter: Any) -> list[int]:
    """Per-position counts of the rows, summed; [] for autoregressive decoding."""
    if drafter is None:
        return []
    return np.sum(np.asarray(counts_BxK), axis=0).astype(int).tolist()


def _result(name, drafter, gamma, temperature, compile_s, median_s, out, batch) -> DecodeResult:
    alpha = out.acceptance_per_position.tolist() if drafter is not None else []
    return DecodeResult(
        name=name,
        batch=batch,
        gamma=gamma if drafter is not None else 0,
        temperature=temperature,
        compile_s=compile_s,
        median_s=median_s,
        tokens=int(np.sum(np.asarray(out.num_generated))),
        tau=out.tau if drafter is not None else 1.0,
        acceptance_tau=out.acceptance_tau if drafter is not None else 1.0,
        alpha=alpha,
        verify_calls=int(np.sum(np.asarray(out.stats.verify_calls))),
        accepted_per_position=_summed_over_rows(out.stats.accepted_per_position, drafter),
        rejected_per_position=_summed_over_rows(out.stats.rejected_per_position, drafter),
        token_lists=out.token_lists(),
        from_draft=[
            np.asarray(out.from_draft)[b, : len(row)].tolist()
            for b, row in enumerate(out.token_lists())
        ],
    )


def _concat_outputs(outs: Sequence[Any]) -> Any:
    """Several GenerateOutputs of equal max_new_tokens as one (rows stacked), so that tau and
    alpha pool over them exactly as over the rows of one batch."""
    stack = lambda *xs: np.concatenate([np.asarray(x) for x in xs])  # noqa: E731
    first = outs[0]
    return dataclasses.replace(
        first,
        tokens=stack(*(o.tokens for o in outs)),
        num_generated=stack(*(o.num_generated for o in outs)),
        from_draft=stack(*(o.from_draft for o in outs)),
        stop_reason=stack(*(o.stop_reason for o in outs)),
        stats=jax.tree.map(stack, *(o.stats for o in outs)),
        steps=np.sum([np.asarray(o.steps) for o in outs]),
    )


def time_prompts_one_by_one(
    name: str,
    target,
    drafter,
    prompts: Sequence[Sequence[int]],
    *,
    prompt_bucket: int = 512,
    **time_kwargs: Any,
) -> DecodeResult:
    """Batch-1 latency over a prompt set: each prompt decoded alone by `time_generate` (which
    takes `time_kwargs`: gamma, max_new_tokens, repeats, ...). `median_s` is the sum of the
    per-prompt medians (the time to serve the set one request at a time), so ms_per_token
    pools every token of the set; tau and alpha pool every verification call. Prompts are
    padded to one `prompt_bucket`, so the set costs one compilation (`compile_s`: the first
    prompt's first call beyond its steady time)."""
    trace_dir = time_kwargs.pop("trace_dir", None)  # the first prompt's call is traced
    timed_prompts = [
        time_generate(
            name,
            target,
            drafter,
            [ids],
            prompt_bucket=prompt_bucket,
            return_output=True,
            trace_dir=trace_dir if i == 0 else None,
            **time_kwargs,
        )  # fmt: skip
        for i, ids in enumerate(prompts)
    ]
    first = timed_prompts[0][0]
    median_s = float(sum(result.median_s for result, _ in timed_prompts))
    pooled = _concat_outputs([out for _, out in timed_prompts])
    result = _result(
        name, drafter, first.gamma, first.temperature, first.compile_s, median_s, pooled, 1
    )
    if first.trace is not None:
        result.trace = {**first.trace, "of": "the first prompt's call"}
    return result


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """`columns` of `rows` (dicts) as a Markdown table, benchmark number formats."""

    def fmt(v):
        if v is None:  # e.g. "exact" of a sampled row: nothing was compared
            return "–"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        if isinstance(v, list):
            return " ".join(f"{x:.2f}" for x in v)
        return str(v)

    return tables.markdown(columns, ([r.get(c, "") for c in columns] for r in rows), fmt)


def device_description() -> str:
    device = jax.devices()[0]
    return f"{device.platform}:{getattr(device, 'device_kind', '?')} x{jax.device_count()}"


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


@dataclasses.dataclass
class BenchDrafter:
    """One drafter configuration of a benchmark: what `specjax.generate` gets.

    Fields:
      name: label in the tables (the spec text unless given).
      drafter: anything `specjax.generate` accepts as a drafter.
      gamma: draft length (the tree's depth for trees; the maximum with adaptive gamma).
      generate_kwargs: extra `specjax.generate` arguments (tree=, adaptive_gamma=).
    """

    name: str
    drafter: Any
    gamma: int
    generate_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


DEFAULT_GAMMA = 4  # a spec without gamma= (the CLI's and the configs' default too)


def parse_drafter_spec(text: str, target: tuple[Model, Params]) -> BenchDrafter:
    """A drafter from a spec of `specjax.drafters.registry` (``kind[:key=value,...]``), e.g.
    ``ngram:gamma=8``, ``early-exit:exit_layer=10,gamma=3``,
    ``eagle:heads=runs/eagle/drafter,gamma=3``, ``model:model=qwen2.5-coder-0.5b-instruct,
    tree=4,2,1``, ``ngram:gamma=8,adaptive=1``, ``early-exit:tree=dynamic:depth=4,top_k=4,
    nodes=16``. A draft model (kind model) is loaded with `specjax.checkpoints.load` in the
    target's dtype; ``name=`` labels the table row (default: the spec text)."""
    spec = registry.parse_spec(text)
    model, params = target
    draft = None
    if spec.kind == "model":  # a separate draft model, any spec checkpoints.load accepts
        from specjax import checkpoints

        draft_model, draft_params, _ = checkpoints.load(spec.knobs["model"], params_dtype(params))
        draft = (draft_model, draft_params)
    drafter = registry.build(spec, target, draft=draft)
    kwargs: dict[str, Any] = {}
    if spec.adaptive:
        kwargs["adaptive_gamma"] = True
    if spec.tree is not None:
        kwargs["tree"] = spec.tree
    gamma = spec.gamma or DEFAULT_GAMMA
    return BenchDrafter(spec.name or text, drafter, gamma, kwargs)


def agreement(spec_rows: Sequence[Sequence[int]], ar_rows: Sequence[Sequence[int]]) -> dict:
    """How far greedy speculative rows agree with autoregressive ones: rows identical, and
    the shortest common prefix (where low-precision near-ties first flipped a token)."""

    def common_prefix(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    prefixes = [common_prefix(a, b) for a, b in zip(spec_rows, ar_rows, strict=True)]
    identical = sum(list(a) == list(b) for a, b in zip(spec_rows, ar_rows, strict=True))
    return {"rows_identical": identical, "min_common_prefix": min(prefixes)}


def _time_set(batch, target, prompt_ids, name, drafter, gamma, *, common, prompt_bucket, **kw):
    """Batch 1: every prompt alone, pooled; batch B: the first B prompts (cycled) at once."""
    if batch == 1:
        return time_prompts_one_by_one(
            name, target, drafter, prompt_ids, gamma=gamma, prompt_bucket=prompt_bucket,
            **common, **kw,
        )  # fmt: skip
    prompts = [prompt_ids[i % len(prompt_ids)] for i in range(batch)]
    return time_generate(
        name, target, drafter, prompts, gamma=gamma, prompt_bucket=prompt_bucket, **common, **kw
    )


def real_model_suite(
    target,
    prompt_ids: Sequence[Sequence[int]],
    drafters: Sequence[BenchDrafter],
    *,
    batches: Sequence[int],
    temperatures: Sequence[float],
    max_new_tokens: int,
    repeats: int,
    eos_ids: Sequence[int] = (),
    full_grid_batches: Sequence[int] = (1,),
    prompt_bucket: int = 512,
    log: Callable[[str], None] = print,
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
    trace_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """AR and every drafter on the same prompts; speedup = AR ms/token / spec ms/token.
    `on_row(rows)` runs after every new row (e.g. to save partial results of a long run).
    With `trace_dir`, every row also traces one call (`time_generate`): its row's "trace".

    Batch 1 decodes every prompt alone (`time_prompts_one_by_one`: the latency of serving the
    set one request at a time); batch B > 1 decodes the first B prompts (cycled) together. At
    batches outside `full_grid_batches` only the first drafter runs (keeps compile time in
    check). Greedy outputs are compared with autoregressive decoding; a mismatch is recorded
    (`exact` = False), never hidden. With `repeats` = 0 (an exactness run) nothing is timed:
    the only call per prompt includes compilation, so rows carry `timed` False and no
    speedup, ms/token or tokens/s (None), and the log says "untimed".
    """
    timed = repeats > 0
    timing_fields = {"timed": True} if timed else UNTIMED  # last in each row: they override
    rows = []
    for batch in batches:
        for temperature in temperatures:
            common = dict(max_new_tokens=max_new_tokens, temperature=temperature,
                          repeats=repeats, eos_ids=eos_ids, trace_dir=trace_dir)  # fmt: skip
            timed_set = functools.partial(
                _time_set, batch, target, prompt_ids, common=common, prompt_bucket=prompt_bucket
            )
            ar = timed_set("autoregressive", None, 1)
            n_prompts = len(prompt_ids) if batch == 1 else batch
            # "exact" compares greedy outputs; sampled rows have nothing to compare: None.
            exact_ar = True if temperature == 0 else None
            rows.append({**ar.row(), "speedup": 1.0, "exact": exact_ar, "prompts": n_prompts,
                         **timing_fields})  # fmt: skip
            if on_row:
                on_row(rows)
            log(f"b={batch} T={temperature} AR " + (f"{ar.ms_per_token:.3f} ms/token" if timed
                else "untimed (repeats=0)"))  # fmt: skip
            chosen = drafters if batch in full_grid_batches else drafters[:1]
            for spec_cfg in chosen:
                spec = timed_set(
                    spec_cfg.name, spec_cfg.drafter, spec_cfg.gamma, **spec_cfg.generate_kwargs
                )
                exact = spec.token_lists == ar.token_lists if temperature == 0 else None
                # Per-token speed: the two runs may stop at different lengths (EOS).
                speedup = ar.ms_per_token / spec.ms_per_token
                row = {**spec.row(), "speedup": speedup, "exact": exact, "prompts": n_prompts,
                       **timing_fields}  # fmt: skip
                if temperature == 0:
                    row.update(agreement(spec.token_lists, ar.token_lists))
                rows.append(row)
                if on_row:
                    on_row(rows)
                speed = (f"{spec.ms_per_token:.3f} ms/token speedup={speedup:.2f}" if timed
                         else "untimed (repeats=0)")  # fmt: skip
                log(f"b={batch} T={temperature} {spec_cfg.name} g={spec_cfg.gamma} "
                    f"tau={spec.tau:.2f} {speed} exact={exact}")  # fmt: skip
    return rows


def synthetic_suite(
    targets: dict[str, ModelConfig],
    draft_config: ModelConfig,
    *,
    gamma: int,
    accept_probs: Sequence[float],
    accept_source: str,
    batch: int,
    context: int,
    max_new_tokens: int,
    bandwidth: float,
    repeats: int,
    log: Callable[[str], None] = print,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Real shapes, random bf16 weights: step costs, c, the floor, and a forced-acceptance
    speculative run giving a *projected* speedup (labelled as such)."""
    rows = []
    prompts = [list(range(1, context + 1))] * batch
    drafts: dict[int, tuple[tuple[Model, Params], float]] = {}
    for name, config in targets.items():
        if config.vocab_size not in drafts:
            # The draft takes the target's vocabulary (e.g. Qwen2.5-7B pads to 152064, the
            # 0.5B to 151936; a Llama-3 target has 128256): its cost changes only by the
            # embedding and head rows.
            draft = synthetic_model(draft_config.replace(vocab_size=config.vocab_size), seed=1)
            drafts[config.vocab_size] = draft, step_costs(*draft, batch, context, [1], repeats)[1]
        draft, draft_step = drafts[config.vocab_size]
        target = synthetic_model(config, seed=0)
        costs = step_costs(*target, batch, context, [1, gamma + 1], repeats)
        common = dict(max_new_tokens=max_new_tokens, temperature=1.0, repeats=repeats)
        ar = time_generate("autoregressive", target, None, prompts, gamma=1, **common)
        forced = time_generate(
            "forced", target, draft, prompts, gamma=gamma,
            verify_fn=forced_acceptance(accept_probs), **common,
        )  # fmt: skip
        row = {
            "target": name,
            "batch": batch,
            "context": context,
            "gamma": gamma,
            "target_step_T1_ms": costs[1],
            f"target_step_T{gamma + 1}_ms": costs[gamma + 1],
            "draft_step_ms": draft_step,
            "c": draft_step / costs[1],
            "floor_ms": floor_ms(config, batch, context, 2, bandwidth),
            "ar_ms_per_token": ar.ms_per_token,
            "forced_tau": forced.tau,
            "projected_spec_ms_per_token": forced.ms_per_token,
            "projected_speedup": ar.ms_per_token / forced.ms_per_token,
            "acceptance_source": accept_source,
        }
        rows.append(row)
        if on_row:
            on_row(row)
        log(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items()))  # fmt: skip
        del target
    return rows


def accept_runs(from_draft: str, gamma: int) -> tuple[list[int], int]:
    """Accepted draft tokens n (0..gamma) per verify call of one generated row.

    `from_draft` is a row's "from_draft" string of `generations.jsonl` ('1': accepted draft
    token, '0': made by the target). The first token comes from the target's prefill, not a
    verify call, so it must be '0' and is skipped. Each verify call then emits "1" * n + "0"
    (n accepted drafts, then the target's correction or bonus). A row cut by its token budget
    or an EOS may end inside a call: that unterminated trailing run of '1's is dropped (its n
    is unknown). Returns (complete runs' n, 1 if a trailing run was dropped else 0); raises
    ValueError on a run longer than gamma or a character other than '0'/'1'.
    """
    if set(from_draft) - {"0", "1"}:
        raise ValueError(f"from_draft must hold only '0' and '1', got {from_draft[:40]!r}")
    if not from_draft:
        return [], 0
    if from_draft[0] != "0":
        raise ValueError("from_draft must start with '0' (the prefill's token), got '1'")
    *complete, trailing = from_draft[1:].split("0")  # "1110110" -> ["111", "11", ""]
    runs = [len(run) for run in complete]
    if max(runs + [len(trailing)]) > gamma:
        longest = max(runs + [len(trailing)])
        raise ValueError(
            f"a run of {longest} accepted draft tokens is longer than gamma={gamma}: the file "
            "was written with a larger gamma"
        )
    return runs, int(bool(trailing))


def accept_histogram_from_generations(path: str | os.PathLike[str], gamma: int) -> np.ndarray:
    """counts[n] = verify calls that accepted n draft tokens (n = 0..gamma), over every row of
    a `generations.jsonl` written by `specjax.experiment.run` (see `accept_runs`).

    Rows without "from_draft" (autoregressive runs, older runners) are an error, as is a row
    whose call count disagrees with its recorded "verify_calls".
    """
    import json

    counts = np.zeros(gamma + 1, np.int64)
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no rows")
    for row in rows:
        if "from_draft" not in row:
            raise ValueError(
                f"{path}: row {row.get('id', '?')} has no 'from_draft' (an autoregressive run, "
                "or a runner older than the field)"
            )
        runs, dropped = accept_runs(row["from_draft"], gamma)
        calls = row.get("verify_calls")
        if calls is not None and len(runs) + dropped != calls:
            raise ValueError(
                f"{path}: row {row.get('id', '?')} shows {len(runs) + dropped} verify calls in "
                f"from_draft but records verify_calls={calls}"
            )
        counts += np.bincount(np.asarray(runs, np.int64), minlength=gamma + 1)
    return counts
