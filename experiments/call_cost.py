"""Where one speculative call's time goes, per draft shape: drafting, the verification call,
acceptance + commit (synthetic weights of a real shape; an EAGLE head of its width).

    python -m experiments.call_cost --shape=qwen2.5-1.5b --draft_vocab=32768 \
        --drafts=chain --drafts=4,2,1,1 --drafts=dynamic:depth=5,top_k=4,nodes=16 --out=runs/calls
    # a projection: the 8B shape's call cost at the trained Qwen head's acceptance
    python -m experiments.call_cost --shape=llama3-8b --draft_vocab=32768 \
        --drafts=chain --tau_from=docs/benchmarks/h200_trees_s12/bench_realtrees.json#eagle-dv32k

Writes <out>/call_cost_<label>_<shape>.json and prints the table. Logic:
specjax/bench/call_cost.py (the same parts as `experiments.profile --what=call`, for several
shapes in one process and one set of weights).
"""

from __future__ import annotations

from absl import app, flags

from specjax import console

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "shape", "qwen2.5-1.5b", "target shape (a key of specjax.bench.parallel.SHAPES)"
)
flags.DEFINE_multi_string("drafts", ["chain"], "'chain' (--gamma drafts) or a token tree")
flags.DEFINE_multi_string(
    "tau_from", [],
    "per --drafts entry, in order: BENCH.json#ROW whose greedy acceptance is replayed ('' for "
    "none): the row then gets projected ms/token = ms per call / tau and a speedup over the "
    "autoregressive step (a projection: synthetic weights, acceptance of a real head)",
)  # fmt: skip
flags.DEFINE_integer("draft_vocab", 0, "the EAGLE head drafts over this many tokens (0: all)")
flags.DEFINE_string(
    "feature_layers", "",
    "the EAGLE head reads these target layers' outputs too (EAGLE-3's inputs, as "
    "head.feature_layers: '' none, 'eagle3', or 0-based indices 'i,j'); the target then "
    "returns them and the head fuses them at each call's catch-up",
)  # fmt: skip
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "weights and KV cache")
flags.DEFINE_integer("gamma", 4, "draft length of 'chain'")
flags.DEFINE_integer("batch", 1, "rows")
flags.DEFINE_integer("context", 512, "prompt tokens in the cache")
flags.DEFINE_integer("calls", 32, "iterations per timed device loop")
flags.DEFINE_integer("repeats", 5, "timed runs after the compiling one (median)")
flags.DEFINE_string("label", "run", "names this run (before, after, ...)")
flags.DEFINE_string("out", "runs/calls", "output folder")


def main(argv):
    del argv
    import json
    from pathlib import Path

    import jax
    import jax.numpy as jnp

    from specjax.bench import call_cost, steps
    from specjax.bench.parallel import SHAPES
    from specjax.drafters import heads
    from specjax.fileio import atomic_write
    from specjax.training.config import resolve_feature_layers

    if FLAGS.shape not in SHAPES:
        raise app.UsageError(f"unknown shape {FLAGS.shape!r}; known: {', '.join(sorted(SHAPES))}")
    shapes = call_cost.parse_shapes(FLAGS.drafts, FLAGS.gamma)
    if FLAGS.tau_from and len(FLAGS.tau_from) != len(FLAGS.drafts):
        raise app.UsageError(
            f"--tau_from given {len(FLAGS.tau_from)} times for {len(FLAGS.drafts)} --drafts: "
            "give one per --drafts entry ('' for none)"
        )
    taus = [call_cost.replayed_tau(spec) if spec else None for spec in FLAGS.tau_from]
    dtype = jnp.dtype(FLAGS.dtype)
    target, params = steps.synthetic_model(SHAPES[FLAGS.shape], dtype)
    try:
        layers = resolve_feature_layers(FLAGS.feature_layers, target.config.num_layers)
        drafter, drafter_params = heads.init_eagle(
            target, params, param_dtype=dtype, feature_layers=layers
        )
    except ValueError as error:  # a bad spelling, or a layer the shape does not have
        raise app.UsageError(f"--feature_layers: {error}") from None
    if FLAGS.draft_vocab:
        drafter_params = heads.with_draft_vocab(drafter_params, range(FLAGS.draft_vocab))
    rows = call_cost.rows(
        target, params, drafter, drafter_params, shapes, batch=FLAGS.batch,
        context=FLAGS.context, calls=FLAGS.calls, repeats=FLAGS.repeats,
    )  # fmt: skip
    if any(taus):
        step_ms = steps.time_step_in_loop(
            target, params, batch=FLAGS.batch, context=FLAGS.context, T=1,
            slots=FLAGS.context + 2, calls=FLAGS.calls, repeats=FLAGS.repeats,
        )  # fmt: skip
        rows = [
            call_cost.project(row, *tau, step_ms) if tau else row
            for row, tau in zip(rows, taus, strict=True)
        ]
    result = {
        "label": FLAGS.label, "shape": FLAGS.shape, "dtype": FLAGS.dtype,
        "draft": f"EAGLE head, synthetic weights, draft vocab {FLAGS.draft_vocab or 'all'}"
        + (f", feature layers {list(layers)}" if layers else ""),
        "batch": FLAGS.batch, "context": FLAGS.context, "device": jax.devices()[0].device_kind,
        "jax": jax.__version__, "rows": rows,
    }  # fmt: skip
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"call_cost_{FLAGS.label}_{FLAGS.shape}.json", json.dumps(result, indent=1))
    print(call_cost.markdown(rows))


if __name__ == "__main__":
    console.run(main)
