"""`make demo`: speculative vs autoregressive decoding, side by side.

Until real checkpoints land this runs a tiny *random* target/draft pair (it says so): the
point is the mechanism (exact greedy equality, acceptance statistics, timing as a ratio
measured in one process with compile time separate), not the numbers.
"""

from __future__ import annotations

import time

import jax
import numpy as np

import specjax
from specjax.models import ModelConfig, init_model


def timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def main() -> None:
    config = ModelConfig(
        vocab_size=512,
        num_layers=4,
        d_model=128,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        ffn_dim=384,
    )
    print("specjax demo: TINY RANDOM target (4 layers) and draft (= target with noisy weights)")
    target = init_model(config, seed=0)
    model, params = target
    noisy = jax.tree.map(lambda x: x * 1.02, params)
    draft = (model, noisy)
    prompts = [list(np.random.default_rng(b).integers(0, 512, 12 + 5 * b)) for b in range(4)]
    for name, drafter in [("autoregressive", None), ("speculative gamma=4", draft)]:

        def run(d=drafter):
            return specjax.generate(target, d, prompts, gamma=4, max_new_tokens=64)

        _, compile_and_run = timed(run)
        out, seconds = timed(run)
        tokens = int(np.sum(out.num_generated))
        print(
            f"{name:>22}: {seconds * 1e3 / (tokens / len(prompts)):7.2f} ms/token-step  "
            f"tau={out.tau:.2f}  first call {compile_and_run:.1f} s (compile)"
        )
        if drafter is None:
            reference = out.token_lists()
        else:
            assert out.token_lists() == reference, "greedy outputs differ!"
            print("greedy speculative output == autoregressive output: yes")


if __name__ == "__main__":
    main()
