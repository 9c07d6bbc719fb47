"""The real Qwen2.5-Coder pair end to end on this machine's CPU: greedy exactness, tau,
alpha per position and wall-clock speedup per gamma, in float32 and bfloat16.

    python -m experiments.pair_cpu --out=docs/benchmarks/cpu_qwen_pair.json

Also writes the accepted-length histogram (per gamma) that GPU projections replay
(`experiments/bench.py --accept_json`). Logic: specjax/bench/speedup.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import flags

from specjax import console
from specjax.bench import speedup
from specjax.eval import prompts as prompts_lib
from specjax.fileio import atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_string("target", "qwen2.5-coder-1.5b-instruct", "target model")
flags.DEFINE_string("draft", "qwen2.5-coder-0.5b-instruct", "draft model")
flags.DEFINE_list("gammas", ["2", "4", "6"], "draft lengths")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "parameter dtypes")
flags.DEFINE_integer("per_set", 2, "prompts from HumanEval and from MT-Bench each")
flags.DEFINE_integer("bf16_prompts", 1, "prompts used for bfloat16 (slow on CPU)")
flags.DEFINE_integer("max_new_tokens", 64, "tokens per prompt")
flags.DEFINE_integer("repeats", 1, "timed repeats after the compile call")
flags.DEFINE_string("out", "runs/pair_cpu.json", "output JSON")


def accept_length_probs(alpha_per_position: list[float]) -> list[float]:
    """P(n accepted), n = 0..K, from per-position conditional acceptance rates."""
    reach = np.concatenate([[1.0], np.cumprod(alpha_per_position)])  # P(n >= i)
    return (reach - np.concatenate([reach[1:], [0.0]])).tolist()


def main(argv):
    del argv
    from specjax.checkpoints import load_model

    texts = prompts_lib.load_prompt_texts(None, FLAGS.per_set)
    results = {"device": speedup.device_description(), "date": speedup.now(), "rows": []}
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for dtype in FLAGS.dtypes:
        target = load_model(FLAGS.target, dtype)
        draft = load_model(FLAGS.draft, dtype)
        prompt_ids = prompts_lib.chat_prompt_ids(target.tokenizer, texts)
        if dtype == "bfloat16":
            prompt_ids = prompt_ids[: FLAGS.bf16_prompts]
        for index, ids in enumerate(prompt_ids):
            common = dict(max_new_tokens=FLAGS.max_new_tokens, repeats=FLAGS.repeats)
            ar = speedup.time_generate("autoregressive", target.pair, None, [ids], gamma=1,
                                     **common)  # fmt: skip
            row_base = {"dtype": dtype, "prompt": index, "prompt_tokens": len(ids)}
            results["rows"].append({**row_base, **ar.row(), "speedup": 1.0, "exact": True})
            print(f"{dtype} prompt {index}: AR {ar.ms_per_token:.1f} ms/token", flush=True)
            for gamma in [int(g) for g in FLAGS.gammas]:
                spec = speedup.time_generate("draft_model", target.pair, draft.pair, [ids],
                                           gamma=gamma, **common)  # fmt: skip
                row = {
                    **row_base, **spec.row(),
                    "speedup": ar.median_s / spec.median_s,
                    "exact": spec.token_lists == ar.token_lists,
                    "accept_length_probs": accept_length_probs(spec.alpha),
                }  # fmt: skip
                results["rows"].append(row)
                print(f"  gamma={gamma} tau={spec.tau:.2f} alpha={np.round(spec.alpha, 2)} "
                      f"speedup={row['speedup']:.2f} exact={row['exact']}", flush=True)  # fmt: skip
            # Written after every prompt: a long CPU run that is stopped keeps what it measured.
            atomic_write(out, json.dumps(results, indent=1))
    columns = ["dtype", "prompt", "name", "gamma", "ms_per_token", "tau", "alpha", "speedup",
               "exact"]  # fmt: skip
    print(speedup.markdown_table(results["rows"], columns))


if __name__ == "__main__":
    console.run(main)
