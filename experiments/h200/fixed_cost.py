"""What a `specjax.generate` call costs besides its decode steps, at a real shape (synthetic
weights): the prefill of prompts of several lengths padded to one bucket, and the host's part.

    python experiments/h200/fixed_cost.py --shape=qwen2.5-1.5b --out=fixed_cost_qwen.json

Benchmarks pad every prompt to one bucket (512) so that all share one compiled program, and
time whole calls: a call's fixed cost is paid once per prompt by AR and speculative runs
alike, so it pulls their ratio towards 1 (a speculative call of ~37 iterations feels it
~3.5x more than AR's 128 steps do).

1. Prefill alone, in a jitted device loop of --iterations prefills (µs per prefill, median of
   --repeats): `one_pass_all_logits` (the prefill before the twentieth session: one pass over
   the bucket, the LM head over all P positions, then each row's last taken), `one_pass` (one
   pass over the bucket, the LM head over each row's last token only) and `narrowest_width`
   (the default now: one pass over the narrowest of P, P/2, P/4 (multiples of
   `sequence.PREFILL_WIDTH`) that holds the prompt), per prompt length. (At 1948f9a the third
   variant was `chunked`, 128-token chunks in a while loop, as many as the prompt needs.)
2. `specjax.generate` with max_new_tokens=1 (prefill, the first token, the loop's first
   check), whole-call wall ms (median of --repeats, host work included), autoregressive and
   the 12-node dynamic tree with an EAGLE head over a 32k draft vocabulary, per length; one
   traced call each at the longest length: device busy ms against wall ms (`--trace_dir`
   keeps its trace). `--host_profile` adds a cProfile of each loop's calls (the host's part
   by function) and `returns_ms`: how long a call takes to return before its result is read,
   against until its result is ready.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import specjax
from specjax.bench import steps as step_lib
from specjax.bench.parallel import SHAPES
from specjax.bench.trace import traced_events
from specjax.decoding import sequence
from specjax.drafters import heads
from specjax.eval.timing import profile_calls, timed
from specjax.models.transformer import params_dtype


def one_pass_all_logits(model, params, prompt_BxP, lengths_B, cache):
    """The prefill before the twentieth session: logits [B, P, V] at every position, then
    each row's last."""
    B, P = prompt_BxP.shape
    positions_BxP = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))
    logits_BxPxV, _, cache = model.forward(params, prompt_BxP, positions_BxP, cache)
    last_BxV = jnp.take_along_axis(logits_BxPxV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
    return last_BxV, cache


VARIANTS = {
    "one_pass_all_logits": one_pass_all_logits,
    "one_pass": sequence.prefill,  # widths None: one pass over the padded width
    # The widths `specjax.generate` compiles for a prompt bucket as wide as the padded prompt.
    "narrowest_width": lambda model, params, prompt, lengths, cache: sequence.prefill(
        model,
        params,
        prompt,
        lengths,
        cache,
        widths=sequence.prefill_widths(prompt.shape[1], prompt.shape[1]),
    ),
}


def prefill_us(model, params, variant, bucket, lengths, slots, iterations, repeats) -> dict:
    """µs per prefill of one prompt of each length in `lengths` (one compile per variant)."""
    prefill = VARIANTS[variant]
    prompt = jnp.ones((1, bucket), jnp.int32)

    @jax.jit
    def loop(params_and_lengths):
        params, lengths = params_and_lengths

        def body(_, total):
            cache = model.init_cache(1, slots, params_dtype(params))
            logits, _ = prefill(model, params, prompt, lengths, cache)
            return total + logits[0, 0]  # a data dependence: no prefill is dropped

        return jax.lax.fori_loop(0, iterations, body, jnp.float32(0))

    return {
        n: step_lib.us_per_iteration(
            loop, (params, jnp.full((1,), n, jnp.int32)), iterations, repeats
        )
        for n in lengths
    }


def returns_ms(dispatch, calls: int = 20) -> dict:
    """How long `dispatch()` (a generate call whose result is not read) takes to return, and
    then its result to be ready, in ms (medians of `calls`): the host's part before the
    program runs, against the wait for the device."""
    returned, ready = [], []
    jax.block_until_ready(dispatch())
    for _ in range(calls):
        start = time.perf_counter()
        out = dispatch()
        returned.append(time.perf_counter() - start)
        jax.block_until_ready(out)
        ready.append(time.perf_counter() - start)
    return {
        "returns_ms": 1e3 * float(np.median(returned)),
        "ready_ms": 1e3 * float(np.median(ready)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="qwen2.5-1.5b")
    parser.add_argument("--lengths", default="64,128,256,512")
    parser.add_argument("--bucket", type=int, default=512)
    parser.add_argument("--new_tokens", type=int, default=128, help="sizes the cache")
    parser.add_argument("--tree", default="dynamic:depth=4,top_k=4,nodes=12")
    parser.add_argument("--draft_vocab", type=int, default=32768)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--generate_only",
        action="store_true",
        help="only part 2 (runs against older specjax trees too: a before/after in one lease)",
    )
    parser.add_argument(
        "--host_profile",
        action="store_true",
        help="also cProfile 20 calls of each loop at the first length (the host's part, by "
        "function: the JSON's host_profile)",
    )
    parser.add_argument(
        "--trace_dir",
        default="",
        help="keep each loop's traced call under TRACE_DIR/<loop> (host threads' events too)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    config = SHAPES[args.shape]
    target, params = step_lib.synthetic_model(config, jnp.bfloat16)
    params = target.decode_params(params)
    slots = args.bucket + args.new_tokens + 16
    result: dict = dict(
        shape=args.shape, bucket=args.bucket, lengths=lengths, specjax=specjax.__file__,
        min_width=getattr(sequence, "PREFILL_WIDTH", None),
        device=str(jax.devices()[0].device_kind), jax=jax.__version__, prefill_us={},
        generate_ms={}, traced={},
    )  # fmt: skip

    for variant in [] if args.generate_only else VARIANTS:
        result["prefill_us"][variant] = prefill_us(
            target, params, variant, args.bucket, lengths, slots, args.iterations, args.repeats
        )
        print(
            variant, {n: round(us) for n, us in result["prefill_us"][variant].items()}, flush=True
        )

    draft, draft_params = heads.init_eagle(target, params, param_dtype=jnp.bfloat16)
    if args.draft_vocab:
        draft_params = heads.with_draft_vocab(draft_params, range(args.draft_vocab))
    loops = {
        "autoregressive": dict(drafter=None),
        "tree": dict(drafter=(draft, draft_params), tree=args.tree),
    }
    rng = np.random.default_rng(0)
    # One throwaway traced host-to-device copy first: in the twenty-first session's traces the
    # first loop traced (AR, each time) spent ~0.9 ms in `DevicePut` against ~0.1 ms for the
    # tree, likely the profiler's first copy rather than the loop's.
    with jax.profiler.trace(tempfile.mkdtemp()):
        jax.block_until_ready(jax.device_put(np.zeros((1, args.bucket), np.int32)))
    for name, kwargs in loops.items():

        def dispatch(n, kwargs=kwargs):
            prompt = [rng.integers(1, config.vocab_size, n).tolist()]
            drafter = kwargs.get("drafter")
            extra = {k: v for k, v in kwargs.items() if k != "drafter"}
            return lambda: specjax.generate(
                (target, params), drafter, prompt, max_new_tokens=1,
                prompt_bucket=args.bucket, cache_size=slots, **extra,
            )  # fmt: skip

        def call(n, dispatch=dispatch):
            run = dispatch(n)
            return lambda: np.asarray(run().tokens)

        result["generate_ms"][name] = {}
        for n in lengths:
            _, timing = timed(call(n), repeats=args.repeats)
            result["generate_ms"][name][n] = 1e3 * timing.median_s
        print(name, {n: round(ms, 2) for n, ms in result["generate_ms"][name].items()}, flush=True)
        trace_dir = Path(args.trace_dir) / name if args.trace_dir else Path(tempfile.mkdtemp())
        summary, _ = traced_events(
            call(lengths[-1]), trace_dir, tokens=1, num_layers=config.num_layers
        )
        if args.host_profile:
            result.setdefault("host_profile", {})[name] = profile_calls(call(lengths[0]))
            result.setdefault("returns_ms", {})[name] = returns_ms(dispatch(lengths[0]))
            print(name, "returns", result["returns_ms"][name], flush=True)
        result["traced"][name] = {
            k: summary.get(k) for k in ("wall_ms", "busy_ms", "kernels", "memcpy_ms", "top_kernels")
        }
        print(name, "traced", {k: summary.get(k) for k in ("wall_ms", "busy_ms", "kernels")})
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
