"""Teacher-forced top-1 of saved EAGLE heads on the target's own greedy answers, per prompt set:
the benchmark sets the drafters are compared on, and held-out training prompts. It tells a
distribution gap (the head is less accurate on these prompts) from an inference-time one
(accurate teacher forced, accepted less when drafting).

    python -m experiments.teacher_forced --target=qwen2.5-coder-1.5b-instruct \
        --heads=eagle-qwen2.5-coder-1.5b-instruct --prompt_dir=DIR --per_set=4 \
        --heldout=runs/data/q24k.prompts.json --heldout_count=12 --max_new_tokens=128

For each set: the target's greedy answers (`training.data.build_data`, features included),
then the head's agreement with the target at drafting steps 1..--steps, teacher forced:
step 1 reads the true feature (`top1`, the held-out metric of training); step k >= 2 reads
the features the head itself predicted at steps 1..k-1 (the replayed passes of
`objectives.eagle_loss`), which is what drafting position k sees. Positions are pooled over
every answer token of the set.

Then (--gamma > 0) the head drafts on the same prompts (`specjax.generate`, greedy; in float32
the output equals the answers above) and the first draft position's acceptance α₁ is set
beside step 1 teacher forced at the positions where those drafts started: the two agree
when drafting reproduces training's step 1, and any gap between step 1 at every position
and at draft starts is selection (a draft starts right after the target disagreed with the
previous draft, or after a fully accepted one).

Logic: specjax/training/diagnostics.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
from absl import app, flags

from specjax import checkpoints, tables, tokenizers
from specjax.bench import drafters as drafters_bench
from specjax.drafters import heads
from specjax.training import diagnostics

FLAGS = flags.FLAGS
flags.DEFINE_string("target", "qwen2.5-coder-1.5b-instruct", "target model (name or path)")
flags.DEFINE_string("heads", "eagle-qwen2.5-coder-1.5b-instruct", "saved EAGLE heads")
flags.DEFINE_list("sets", ["mt_bench", "humaneval", "gsm8k"], "benchmark prompt sets")
flags.DEFINE_string("prompt_dir", None, "folder with the benchmark prompt files")
flags.DEFINE_integer("per_set", 4, "prompts of each benchmark set")
flags.DEFINE_string("heldout", "", "a tokenized prompts file (--prompts_only) of the training")
flags.DEFINE_integer("heldout_count", 12, "its last N prompts (the held-out ones)")
flags.DEFINE_integer("max_new_tokens", 128, "answer tokens per prompt")
flags.DEFINE_integer("steps", 4, "drafting steps replayed")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "the target's dtype")
flags.DEFINE_integer("gamma", 4, "draft length of the drafting check (0: skip it)")


def main(argv):
    del argv
    model, params, meta = checkpoints.load(FLAGS.target, jnp.dtype(FLAGS.dtype))
    target = (model, params)
    tokenizer = tokenizers.load_tokenizer(meta["path"])
    drafter, loaded = heads.load_heads(FLAGS.heads, model, params, target_sha256=meta.get("sha256"))
    sets = drafters_bench.load_prompt_sets(tokenizer, FLAGS.sets, FLAGS.per_set, FLAGS.prompt_dir)
    if FLAGS.heldout:
        prompts = json.loads(Path(FLAGS.heldout).read_text())["prompts"]
        sets["held-out training prompts"] = prompts[-FLAGS.heldout_count :]
    rows = []
    for name, prompts in sets.items():
        agreement = diagnostics.set_agreement(
            target, drafter, loaded, prompts, tuple(tokenizer.eos_ids),
            max_new_tokens=FLAGS.max_new_tokens, steps=FLAGS.steps, gamma=FLAGS.gamma,
        )  # fmt: skip
        row = {"set": name, **agreement}
        rows.append(row)
        print(json.dumps(row), flush=True)
    columns = list(rows[0])
    print(f"\n{FLAGS.heads} on {FLAGS.target} ({FLAGS.dtype}), teacher forced:\n")
    print(tables.markdown(columns, ([r[c] for c in columns] for r in rows),
                          lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)))  # fmt: skip


if __name__ == "__main__":
    app.run(main)
