"""FLOPs and bytes of one head-training step at a real shape, from XLA's cost analysis of the
compiled step (device-independent counts, nothing timed; runs on a CPU in about a minute).

    python -m experiments.train_flops --shape=qwen2.5-1.5b --batch=16 --positions=384 \
        --new_tokens=256 --train_vocab=0,32768

For each --train_vocab (0: the full LM head; N: EAGLE-3's draft vocabulary of N tokens,
config `head.train_vocab`) it prints the train step's FLOPs and bytes accessed, and the ratio
to the first. Where the step is compute-bound (the LM head at batch 16 x 384 positions), the
FLOP ratio bounds the step-time ratio; the H200 timing is the verdict.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from specjax import tables
from specjax.drafters import heads
from specjax.models.config import KNOWN_SHAPES
from specjax.models.transformer import abstract_model
from specjax.training import objectives
from specjax.training.trainer import TrainSettings, make_train_step

FLAGS = flags.FLAGS
flags.DEFINE_string("shape", "qwen2.5-1.5b", "target shape (specjax.models.config.KNOWN_SHAPES)")
flags.DEFINE_enum("kind", "eagle", ["eagle", "medusa"], "head kind")
flags.DEFINE_integer("batch", 16, "sequences per step")
flags.DEFINE_integer("positions", 384, "tokens per sequence (prompt + answer)")
flags.DEFINE_integer("new_tokens", 256, "answer tokens per sequence (the scored positions)")
flags.DEFINE_list("train_vocab", ["0", "32768"], "draft vocabularies to compare (0: every token)")
flags.DEFINE_integer("unroll_steps", 1, "EAGLE: drafting steps replayed in training")


def step_cost(kind: str, shape: str, batch: int, positions: int, new_tokens: int,
              train_vocab: int, unroll_steps: int) -> dict[str, float]:  # fmt: skip
    """XLA's cost analysis of the compiled train step (flops, bytes accessed)."""
    config = KNOWN_SHAPES[shape]
    model, abstract = abstract_model(config, jnp.float32)
    drafter, params = heads.init_heads(kind, model, abstract)
    io = jax.tree.map(
        lambda x: None if x is None else jax.ShapeDtypeStruct(x.shape, jnp.float32), params["io"]
    )
    if train_vocab:  # the draft vocabulary's head slice: only its shape matters here
        D = config.d_model
        io = {**io, "draft_ids": jax.ShapeDtypeStruct((train_vocab,), jnp.int32),
              "draft_head": jax.ShapeDtypeStruct((D, train_vocab), jnp.float32)}  # fmt: skip
    if kind == "eagle":
        loss_fn = objectives.eagle_loss(drafter, new_tokens, unroll_steps=unroll_steps)
    else:
        loss_fn = objectives.medusa_loss(drafter, new_tokens)
    settings = TrainSettings(num_steps=10, batch_size=batch)
    trainable = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params["head"])
    opt_state = jax.eval_shape(settings.optimizer().init, trainable)
    batch_spec = {
        "tokens": jax.ShapeDtypeStruct((batch, positions), jnp.int32),
        "lengths": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "gen_start": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "hidden": jax.ShapeDtypeStruct((batch, positions, config.d_model), jnp.float32),
    }
    step = make_train_step(loss_fn, settings)
    compiled = step.lower(
        trainable, opt_state, {"io": io}, batch_spec, jax.ShapeDtypeStruct((), jnp.int32)
    ).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"flops": float(cost.get("flops", np.nan)),
            "bytes": float(cost.get("bytes accessed", np.nan))}  # fmt: skip


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
