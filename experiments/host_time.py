"""Host time of one `specjax.generate` call: the wall time until it returns, its result not
yet ready (jit dispatches asynchronously), median of --calls calls after a compile call.

    python -m experiments.host_time                        # this tree
    cd <an older tree> && python -m experiments.host_time    # a before/after

A 30-layer tiny model (float32, width 32) on whatever device jax has: the device work is
small, so the figure is the Python and dispatch work a call costs on this host (checks,
conversions, hashing the static arguments, the PRNG key, placing the inputs, launching the
program), autoregressive and a 12-node dynamic tree with an EAGLE head. `--profile` prints
each loop's cProfile by cumulative time.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import specjax
from specjax.bench import steps as step_lib
from specjax.drafters import heads
from specjax.eval.timing import profile_calls
from specjax.models.config import ModelConfig

TINY_30_LAYERS = ModelConfig(
    family="llama", vocab_size=256, num_layers=30, d_model=32, num_heads=4, num_kv_heads=2,
    head_dim=8, ffn_dim=64,
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    target, params = step_lib.synthetic_model(TINY_30_LAYERS, jnp.float32)
    params = target.decode_params(params)
    draft, draft_params = heads.init_eagle(target, params, param_dtype=jnp.float32)
    prompt = [list(range(1, 60))]
    loops = {
        "autoregressive": (None, {}),
        "tree": ((draft, draft_params), {"tree": "dynamic:depth=4,top_k=4,nodes=12"}),
    }
    print(f"specjax from {specjax.__file__}, jax {jax.__version__} on {jax.default_backend()}")
    for name, (drafter, kwargs) in loops.items():

        def call(drafter=drafter, kwargs=kwargs):
            return specjax.generate(
                (target, params), drafter, prompt, max_new_tokens=1, prompt_bucket=64, **kwargs
            )

        out = call()
        seconds = []
        for _ in range(args.calls):
            jax.block_until_ready(out)  # the previous call's work is done: time this one alone
            start = time.perf_counter()
            out = call()
            seconds.append(time.perf_counter() - start)
        print(f"{name}: {1e3 * float(np.median(seconds)):.3f} ms host time per call")
        if args.profile:
            run = lambda call=call: jax.block_until_ready(call())  # noqa: E731
            print("\n".join(profile_calls(run, args.calls, sort="cumulative", top=25)))


if __name__ == "__main__":
    main()
