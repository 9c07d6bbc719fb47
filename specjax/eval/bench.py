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
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import specjax
from specjax import cache as kv_cache
from specjax.decoding import rejection
from specjax.decoding.sampling import Sampling
from specjax.eval.timing import timed
from specjax.models.config import ModelConfig
from specjax.models.transformer import Model, Params, Transformer


def measure_copy_bandwidth(num_bytes: float = 2e9, repeats: int = 10) -> float:
    """Device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    n = int(num_bytes // 4)
    x = jnp.arange(n, dtype=jnp.float32)
    copy = jax.jit(lambda a: a * 1.0001)  # a real read and write; `a + 0` may be elided
    _, timing = timed(copy, x, repeats=repeats)
    return 2 * n * 4 / timing.median_s


def weight_bytes(config: ModelConfig, bytes_per_param: int) -> int:
    return config.num_params() * bytes_per_param


def kv_bytes_read(config: ModelConfig, batch: int, context: int, bytes_per_value: int) -> int:
    """Keys and values one step must read: 2 x L x B x context x G x Dh."""
    return (
        2 * config.num_layers * batch * context * config.num_kv_heads * config.head_dim
        * bytes_per_value
    )  # fmt: skip


def floor_ms(config: ModelConfig, batch: int, context: int, bytes_per: int, bandwidth: float):
    """Minimum time of one target step: every weight and every cached key/value read once."""
    total = weight_bytes(config, bytes_per) + kv_bytes_read(config, batch, context, bytes_per)
    return 1e3 * total / bandwidth


def synthetic_model(config: ModelConfig, dtype=jnp.bfloat16, seed: int = 0) -> tuple[Model, Params]:
    """Random weights of a real shape, created directly on the default device (no transfer)."""
    from flax import nnx

    def create():
        return nnx.split(Transformer(config, rngs=nnx.Rngs(seed), param_dtype=dtype))[1]

    params = jax.jit(create)()
    model, _ = specjax.models.abstract_model(config, dtype)
    return model, params


def step_costs(
    model: Model,
    params: Params,
    batch: int,
    context: int,
    tokens_per_call: Sequence[int],
    repeats: int = 20,
) -> dict[int, float]:
    """Median ms of one forward call over T new tokens with `context` cached slots."""
    dtype = jax.tree.leaves(params)[0].dtype
    results = {}
    for T in tokens_per_call:
        cache = model.init_cache(batch, context + T, dtype=dtype)
        cache = kv_cache.rollback(cache, jnp.full((batch,), context, jnp.int32))
        tokens = jnp.ones((batch, T), jnp.int32)
        positions = context + jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (batch, T))
        step = jax.jit(model.forward)
        _, timing = timed(step, params, tokens, positions, cache, repeats=repeats)
        results[T] = timing.median_s * 1e3
    return results


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
    tau: float
    alpha: list[float]
    token_lists: list[list[int]] = dataclasses.field(repr=False, default_factory=list)
    from_draft: list[list[bool]] = dataclasses.field(repr=False, default_factory=list)

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
) -> DecodeResult:
    """Times `specjax.generate` (compile separate, median of repeats)."""
    sampling = Sampling.create(temperature)

    def run(seed=0):
        return specjax.generate(
            target, drafter, prompts, sampling=sampling, gamma=gamma,
            max_new_tokens=max_new_tokens, eos_ids=eos_ids, seed=seed, verify_fn=verify_fn,
        )  # fmt: skip

    out, timing = timed(run, repeats=repeats)
    alpha = out.acceptance_per_position.tolist() if drafter is not None else []
    return DecodeResult(
        name=name,
        batch=len(prompts),
        gamma=gamma if drafter is not None else 0,
        temperature=temperature,
        compile_s=timing.compile_s,
        median_s=timing.median_s,
        tokens=int(np.sum(np.asarray(out.num_generated))),
        tau=out.tau if drafter is not None else 1.0,
        alpha=alpha,
        token_lists=out.token_lists(),
        from_draft=[
            np.asarray(out.from_draft)[b, : len(row)].tolist()
            for b, row in enumerate(out.token_lists())
        ],
    )


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        if isinstance(v, list):
            return " ".join(f"{x:.2f}" for x in v)
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def device_description() -> str:
    device = jax.devices()[0]
    return f"{device.platform}:{getattr(device, 'device_kind', '?')} x{jax.device_count()}"


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def load_prompt_texts(prompt_dir: str | None, per_set: int) -> list[str]:
    """First user turns of `per_set` HumanEval and `per_set` MT-Bench prompts (seeded); files
    from `prompt_dir` when given (machines without registry access), else downloaded."""
    from specjax.eval.prompts import load_prompts

    def path(name):
        return os.path.join(prompt_dir, name) if prompt_dir else None

    humaneval = load_prompts("humaneval", subset=per_set, seed=0, path=path("HumanEval.jsonl.gz"))
    mt_bench = load_prompts("mt_bench", subset=per_set, seed=0, path=path("question.jsonl"))
    return [p.text for p in humaneval] + [p.text for p in mt_bench]


def chat_prompt_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Chat-formatted token ids of single-turn user prompts."""
    return [tokenizer.encode_chat([{"role": "user", "content": text}]) for text in texts]


def real_model_suite(
    target,
    prompt_ids: Sequence[Sequence[int]],
    drafters: dict[str, tuple[Any, int]],
    *,
    batches: Sequence[int],
    temperatures: Sequence[float],
    max_new_tokens: int,
    repeats: int,
    eos_ids: Sequence[int] = (),
    full_grid_batches: Sequence[int] = (1,),
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """AR and every drafter on the same prompts; speedup = AR median / spec median.

    `drafters` maps a name to (drafter, gamma). At batches outside `full_grid_batches` only
    the first drafter runs (keeps compile time in check). Greedy outputs are compared with
    autoregressive decoding; a mismatch is recorded (`exact` = False), never hidden.
    """
    rows = []
    for batch in batches:
        prompts = [prompt_ids[i % len(prompt_ids)] for i in range(batch)]
        for temperature in temperatures:
            common = dict(max_new_tokens=max_new_tokens, temperature=temperature,
                          repeats=repeats, eos_ids=eos_ids)  # fmt: skip
            ar = time_generate("autoregressive", target, None, prompts, gamma=1, **common)
            rows.append({**ar.row(), "speedup": 1.0, "exact": True})
            log(f"b={batch} T={temperature} AR {ar.ms_per_token:.3f} ms/token")
            names = list(drafters) if batch in full_grid_batches else list(drafters)[:1]
            for name in names:
                drafter, gamma = drafters[name]
                spec = time_generate(name, target, drafter, prompts, gamma=gamma, **common)
                exact = temperature > 0 or spec.token_lists == ar.token_lists
                # Per-token speed: the two runs may stop at different lengths (EOS).
                speedup = ar.ms_per_token / spec.ms_per_token
                rows.append({**spec.row(), "speedup": speedup, "exact": exact})
                log(f"b={batch} T={temperature} {name} g={gamma} {spec.ms_per_token:.3f} "
                    f"ms/token tau={spec.tau:.2f} speedup={speedup:.2f} exact={exact}")  # fmt: skip
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
) -> list[dict[str, Any]]:
    """Real shapes, random bf16 weights: step costs, c, the floor, and a forced-acceptance
    speculative run giving a *projected* speedup (labelled as such)."""
    rows = []
    draft = synthetic_model(draft_config, seed=1)
    draft_step = step_costs(*draft, batch, context, [1], repeats)[1]
    prompts = [list(range(1, context + 1))] * batch
    for name, config in targets.items():
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
        log(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items()))  # fmt: skip
        del target
    return rows
