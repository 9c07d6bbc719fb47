"""Is greedy speculative output identical to autoregressive output at batch > 1, per dtype?

    python -m experiments.bf16_exactness --gguf=PATH --prompt_dir=DIR

For each (dtype, matmul precision) and batch, prints the rows whose speculative (prompt
lookup, gamma 4) tokens differ from autoregressive ones, with the first differing index, and
whether autoregressive decoding of those rows alone (batch 1) equals the batched run. It
separates a loop bug (float32 would differ too) from bf16 rounding that depends on the shape
of the call (autoregressive decoding alone already changes with the batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import flags

import specjax
from specjax import checkpoints, console, tokenizers
from specjax.drafters.ngram import NgramDrafter
from specjax.eval import prompts as prompts_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("gguf", "smollm2-135m-instruct", "model name or .gguf path")
flags.DEFINE_string("prompt_dir", None, "folder with HumanEval.jsonl.gz and question.jsonl")
flags.DEFINE_list("batches", ["8", "32"], "batch sizes")
flags.DEFINE_integer("max_new_tokens", 128, "tokens per row")


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main(argv):
    del argv
    path = checkpoints.resolve(FLAGS.gguf)
    ids = prompts_lib.chat_prompt_ids(
        tokenizers.load_tokenizer(path), prompts_lib.load_prompt_texts(FLAGS.prompt_dir, 16)
    )
    for dtype, precision in [(jnp.float32, "highest"), (jnp.bfloat16, "default")]:
        jax.config.update("jax_default_matmul_precision", precision)
        model, params, _ = checkpoints.load(path, dtype, cache=False, progress=False)
        target = (model, params)
        for batch in [int(b) for b in FLAGS.batches]:
            prompts = [ids[i % len(ids)] for i in range(batch)]
            n = FLAGS.max_new_tokens
            ar = specjax.generate(target, None, prompts, max_new_tokens=n).token_lists()
            spec = specjax.generate(
                target, NgramDrafter(), prompts, gamma=4, max_new_tokens=n
            ).token_lists()
            bad = [(i, first_difference(a, s)) for i, (a, s) in enumerate(zip(ar, spec)) if a != s]
            alone = [
                specjax.generate(target, None, [prompts[i]], max_new_tokens=n).token_lists()[0]
                == ar[i]
                for i, _ in bad[:3]
            ]
            print(
                f"{jnp.dtype(dtype).name} precision={precision} batch={batch}: rows differing "
                f"(row, first index) {bad}; batched AR == AR alone for the first three: {alone}",
                flush=True,
            )


if __name__ == "__main__":
    console.run(main)
