"""Tensor- and data-parallel benchmark on synthetic weights of a real shape, on all local
devices (N GPUs, a TPU host, or fake CPU devices).

    python -m experiments.bench_parallel --shape=llama3-8b --out=runs/bench_parallel/llama3-8b.json
    python -m experiments.bench_parallel --shape=llama3-8b --tp=2 --sections=step,ar
    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python -m experiments.bench_parallel --shape=tiny --repeats=1 --max_new_tokens=8

For each tensor-parallel size tp (default: every size the shape and the devices allow):
  step  one target forward at T = 1, 5, 9 new tokens on a filled cache (median ms)
  ar    autoregressive ms/token at batch 1 and 8
  spec  speculative ms/token at batch 1 with acceptance forced to alpha (a projection)
  dp    throughput (tokens/s) at batch 32 on (data = N / tp, model = tp), and on one device
Writes JSON to --out and prints markdown tables. Logic: specjax/parallel/bench.py.
"""

from __future__ import annotations

from absl import app, flags

from specjax.parallel import bench

_D = bench.Settings()
FLAGS = flags.FLAGS
flags.DEFINE_string("shape", _D.shape, f"target shape: {', '.join(bench.SHAPES)}")
flags.DEFINE_string("draft_shape", _D.draft_shape, "draft shape of the spec section ('' = default)")
flags.DEFINE_list("tp", [], "tensor-parallel sizes (empty = all allowed)")
flags.DEFINE_list("sections", list(_D.sections), f"subset of {', '.join(bench.SECTIONS)}")
flags.DEFINE_list("step_tokens", [str(t) for t in _D.step_tokens], "T of the step timings")
flags.DEFINE_integer("context", _D.context, "cached tokens before a timed step")
flags.DEFINE_list("ar_batches", [str(b) for b in _D.ar_batches], "batches of the ar rows")
flags.DEFINE_integer("prompt_len", _D.prompt_len, "prompt tokens per row")
flags.DEFINE_integer("max_new_tokens", _D.max_new_tokens, "generated tokens per row")
flags.DEFINE_integer("dp_batch", _D.dp_batch, "batch of the data-parallel rows")
flags.DEFINE_integer("gamma", _D.gamma, "draft length of the spec rows")
flags.DEFINE_float("alpha", _D.alpha, "forced i.i.d. acceptance of the spec rows")
flags.DEFINE_bool("shard_drafter", _D.shard_drafter, "split the draft over the model axis too")
flags.DEFINE_integer("repeats", _D.repeats, "timed calls after the first")
flags.DEFINE_string("dtype", _D.dtype, "weight / cache dtype")
flags.DEFINE_float("temperature", _D.temperature, "sampling temperature (spec needs > 0)")
flags.DEFINE_string("out", "", "JSON path (default runs/bench_parallel/<shape>.json)")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    ints = lambda values: tuple(int(v) for v in values)  # noqa: E731
    settings = bench.Settings(
        shape=FLAGS.shape,
        draft_shape=FLAGS.draft_shape,
        tp=ints(FLAGS.tp),
        sections=tuple(FLAGS.sections),
        step_tokens=ints(FLAGS.step_tokens),
        context=FLAGS.context,
        ar_batches=ints(FLAGS.ar_batches),
        prompt_len=FLAGS.prompt_len,
        max_new_tokens=FLAGS.max_new_tokens,
        dp_batch=FLAGS.dp_batch,
        gamma=FLAGS.gamma,
        alpha=FLAGS.alpha,
        shard_drafter=FLAGS.shard_drafter,
        repeats=FLAGS.repeats,
        dtype=FLAGS.dtype,
        temperature=FLAGS.temperature,
    )
    try:
        result = bench.run(settings)
    except ValueError as error:  # bad shapes / sections / tp: a usage message, not a trace
        raise app.UsageError(str(error)) from None
    path = bench.write_json(result, FLAGS.out or f"runs/bench_parallel/{settings.shape}.json")
    print(bench.markdown(result))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    app.run(main)
