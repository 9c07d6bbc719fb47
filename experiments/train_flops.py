"""FLOPs and bytes of one head-training step at a real shape, from XLA's cost analysis of the
compiled step (device-independent counts, nothing timed; runs on a CPU in about a minute).

    python -m experiments.train_flops --shape=qwen2.5-1.5b --batch=16 --positions=384 \
        --new_tokens=256 --train_vocab=0,32768

For each --train_vocab (0: the full LM head; N: EAGLE-3's draft vocabulary of N tokens,
config `head.train_vocab`) it prints the train step's FLOPs and bytes accessed, and the ratio
to the first. Where the step is compute-bound (the LM head at batch 16 x 384 positions), the
FLOP ratio bounds the step-time ratio; the H200 timing is the verdict.

Logic: specjax/training/diagnostics.py.
"""

from __future__ import annotations

from absl import app, flags

from specjax import tables
from specjax.training.diagnostics import step_cost

FLAGS = flags.FLAGS
flags.DEFINE_string("shape", "qwen2.5-1.5b", "target shape (specjax.models.config.KNOWN_SHAPES)")
flags.DEFINE_enum("kind", "eagle", ["eagle", "medusa"], "head kind")
flags.DEFINE_integer("batch", 16, "sequences per step")
flags.DEFINE_integer("positions", 384, "tokens per sequence (prompt + answer)")
flags.DEFINE_integer("new_tokens", 256, "answer tokens per sequence (the scored positions)")
flags.DEFINE_list("train_vocab", ["0", "32768"], "draft vocabularies to compare (0: every token)")
flags.DEFINE_integer("unroll_steps", 1, "EAGLE: drafting steps replayed in training")


def main(argv):
    del argv
    rows = []
    for vocab in [int(v) for v in FLAGS.train_vocab]:
        cost = step_cost(FLAGS.kind, FLAGS.shape, FLAGS.batch, FLAGS.positions,
                         FLAGS.new_tokens, vocab, FLAGS.unroll_steps)  # fmt: skip
        rows.append((vocab or "all", cost["flops"] / 1e12, cost["bytes"] / 1e9))
        print(f"train_vocab={vocab}: {cost['flops'] / 1e12:.2f} TFLOP, "
              f"{cost['bytes'] / 1e9:.1f} GB accessed", flush=True)  # fmt: skip
    base = rows[0][1]
    print(f"\n{FLAGS.kind} train step, {FLAGS.shape}, batch {FLAGS.batch} x {FLAGS.positions} "
          f"positions ({FLAGS.new_tokens} scored), XLA cost analysis:\n")  # fmt: skip
    print(tables.markdown(
        ("train_vocab", "TFLOP", "GB accessed", "FLOPs vs first"),
        ([v, f"{t:.2f}", f"{g:.1f}", f"{t / base:.2f}"] for v, t, g in rows),
    ))  # fmt: skip


if __name__ == "__main__":
    app.run(main)
