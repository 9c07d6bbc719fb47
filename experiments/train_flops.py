"""FLOPs and bytes of one head-training step at a real shape, from XLA's cost analysis of the
compiled step (device-independent counts, nothing timed; runs on a CPU in about a minute).

    python -m experiments.train_flops --shape=qwen2.5-1.5b --batch=16 --positions=384 \
        --new_tokens=256 --train_vocab=0,32768

For each --train_vocab (0: the full LM head; N: EAGLE-3's draft vocabulary of N tokens,
config `head.train_vocab`) and each --features (stored: the batch carries the target's
features; online: the step runs the bfloat16 target over its batch, `data.features=online`)
it prints the train step's FLOPs and bytes accessed, and the ratio to the first.
--feature_layers gives the head EAGLE-3's inputs (as `head.feature_layers`). Where the step
is compute-bound (the LM head at batch 16 x 384 positions), the FLOP ratio bounds the
step-time ratio; the H200 timing is the verdict.

    python -m experiments.train_flops --train_vocab=32768 --features=stored,online \
        --feature_layers=eagle3

Logic: specjax/training/diagnostics.py.
"""

from __future__ import annotations

from absl import app, flags

from specjax import tables
from specjax.models.config import KNOWN_SHAPES
from specjax.training.config import DATA_FEATURES, resolve_feature_layers
from specjax.training.diagnostics import step_cost

FLAGS = flags.FLAGS
flags.DEFINE_string("shape", "qwen2.5-1.5b", "target shape (specjax.models.config.KNOWN_SHAPES)")
flags.DEFINE_enum("kind", "eagle", ["eagle", "medusa"], "head kind")
flags.DEFINE_integer("batch", 16, "sequences per step")
flags.DEFINE_integer("positions", 384, "tokens per sequence (prompt + answer)")
flags.DEFINE_integer("new_tokens", 256, "answer tokens per sequence (the scored positions)")
flags.DEFINE_list("train_vocab", ["0", "32768"], "draft vocabularies to compare (0: every token)")
flags.DEFINE_integer("unroll_steps", 1, "EAGLE: drafting steps replayed in training")
flags.DEFINE_list("features", ["stored"], "stored and/or online (see the module docstring)")
flags.DEFINE_string("feature_layers", "", 'EAGLE: "", "eagle3" or layer indices "i,j,..."')


def main(argv):
    del argv
    try:
        num_layers = KNOWN_SHAPES[FLAGS.shape].num_layers
        layers = resolve_feature_layers(FLAGS.feature_layers, num_layers)
    except ValueError as error:
        raise app.UsageError(f"--feature_layers: {error}") from None
    if layers and FLAGS.kind != "eagle":
        raise app.UsageError("--feature_layers applies to --kind=eagle only")
    unknown = [f for f in FLAGS.features if f not in DATA_FEATURES]
    if unknown:  # before any step is compiled
        raise app.UsageError(f"--features takes {' and/or '.join(DATA_FEATURES)}, got {unknown}")
    rows = []
    for vocab in [int(v) for v in FLAGS.train_vocab]:
        for features in FLAGS.features:
            cost = step_cost(FLAGS.kind, FLAGS.shape, FLAGS.batch, FLAGS.positions,
                             FLAGS.new_tokens, vocab, FLAGS.unroll_steps, features,
                             layers)  # fmt: skip
            rows.append((vocab or "all", features, cost["flops"] / 1e12, cost["bytes"] / 1e9))
            print(f"train_vocab={vocab} features={features}: {cost['flops'] / 1e12:.2f} TFLOP, "
                  f"{cost['bytes'] / 1e9:.1f} GB accessed", flush=True)  # fmt: skip
    base = rows[0][2]
    print(f"\n{FLAGS.kind} train step, {FLAGS.shape}, batch {FLAGS.batch} x {FLAGS.positions} "
          f"positions ({FLAGS.new_tokens} scored), feature layers {list(layers) or 'none'}, "
          "XLA cost analysis:\n")  # fmt: skip
    print(tables.markdown(
        ("train_vocab", "features", "TFLOP", "GB accessed", "FLOPs vs first"),
        ([v, f, f"{t:.2f}", f"{g:.1f}", f"{t / base:.2f}"] for v, f, t, g in rows),
    ))  # fmt: skip


if __name__ == "__main__":
    app.run(main)
