"""Tensor- and data-parallel benchmark on synthetic weights of a real shape, on all local
devices (N GPUs, a TPU host, or fake CPU devices).

    python -m experiments.bench_parallel --shape=llama3-8b --out=runs/bench_parallel/llama3-8b.json
    python -m experiments.bench_parallel --shape=llama3-8b --tp=2 --sections=step,ar
    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python -m experiments.bench_parallel --shape=tiny --repeats=1 --max_new_tokens=8

Llama-3-70B on 4 GPUs, everything the speculative projection needs in one run (two draft
shapes, each replicated and sharded, batches 1 and 8, the real Qwen pair's acceptance
replayed):

    python -m experiments.bench_parallel --shape=llama3-70b --tp=4 --sections=step,ar,spec \
        --draft_shapes=llama3.2-1b,llama3.2-3b --draft_sharding=replicated,sharded \
        --spec_batches=1,8 --accept_from=docs/benchmarks/qwen_accept_g4.json \
        --max_new_tokens=32 --repeats=3

For each tensor-parallel size tp (default: every size the shape and the devices allow):
  step   one target forward at T = 1, 5, 9 new tokens on a filled cache (median ms)
  ar     autoregressive ms/token at batch 1 and 8
  spec   per draft shape x draft sharding: one draft forward at T = 1 and c = draft step /
         target step; then at each spec batch, speculative ms/token with the acceptance
         replayed from --accept_from (else forced i.i.d. at --alpha), timed interleaved with
         an autoregressive run of the same batch (the projected speedup is their ratio)
  dp     throughput (tokens/s) at batch 32 on (data = N / tp, model = tp), and on one device
  vocab  (on request) top-k sampling at the ar batches, tp > 1: the vocab-parallel filter
         against GSPMD's all-gather of the logits, interleaved, tokens compared. On two GPUs:
         python -m experiments.bench_parallel --shape=llama3-8b --tp=2 --sections=vocab
Each row has its memory floor beside it (the copy bandwidth is measured once per run).
--accept_from takes {"accept_length_probs": [...], "source": "..."} JSON or a runner's
generations.jsonl (e.g. runs/<sweep>/points/gamma=4/generations.jsonl; gamma from the
config.json beside it). Writes JSON to --out and prints markdown tables.
Logic: specjax/bench/parallel.py.
"""

from __future__ import annotations

from absl import app, flags

from specjax import console
from specjax.bench import parallel as parallel_bench

_D = parallel_bench.Settings()
FLAGS = flags.FLAGS
flags.DEFINE_string("shape", _D.shape, f"target shape: {', '.join(parallel_bench.SHAPES)}")
flags.DEFINE_list(
    "draft_shapes",
    [],
    f"draft shapes of the spec section (empty = default): {', '.join(parallel_bench.SHAPES)}",
)
flags.DEFINE_string("draft_shape", _D.draft_shape, "one draft shape (older flag: --draft_shapes)")
flags.DEFINE_list(
    "draft_sharding",
    [],
    f"subset of {', '.join(parallel_bench.DRAFT_SHARDINGS)} "
    "(empty = replicated, or --shard_drafter)",
)
flags.DEFINE_bool("shard_drafter", _D.shard_drafter, "older flag: --draft_sharding=sharded")
flags.DEFINE_list("tp", [], "tensor-parallel sizes (empty = all allowed)")
flags.DEFINE_list("sections", list(_D.sections), f"subset of {', '.join(parallel_bench.SECTIONS)}")
flags.DEFINE_list("step_tokens", [str(t) for t in _D.step_tokens], "T of the step timings")
flags.DEFINE_integer("context", _D.context, "cached tokens before a timed step")
flags.DEFINE_list("ar_batches", [str(b) for b in _D.ar_batches], "batches of the ar rows")
flags.DEFINE_list("spec_batches", [str(b) for b in _D.spec_batches], "batches of the spec rows")
flags.DEFINE_list(
    "full_grid_batches",
    [],
    "spec batches running every draft shape x sharding (others: the first only; empty = all)",
)
flags.DEFINE_integer("prompt_len", _D.prompt_len, "prompt tokens per row")
flags.DEFINE_integer("max_new_tokens", _D.max_new_tokens, "generated tokens per row")
flags.DEFINE_integer("dp_batch", _D.dp_batch, "batch of the data-parallel rows")
flags.DEFINE_integer(
    "gamma",
    _D.gamma,
    f"draft length (0 = the --accept_from histogram's, else {parallel_bench.DEFAULT_GAMMA})",
)
flags.DEFINE_float("alpha", _D.alpha, "i.i.d. acceptance assumed without --accept_from")
flags.DEFINE_string(
    "accept_from",
    _D.accept_from,
    "acceptance histogram JSON, a runner's generations.jsonl, or BENCH.json#NAME (a bench row)",
)
flags.DEFINE_integer("repeats", _D.repeats, "timed calls after the first")
flags.DEFINE_string("dtype", _D.dtype, "weight / cache dtype")
flags.DEFINE_float("temperature", _D.temperature, "sampling temperature (spec needs > 0)")
flags.DEFINE_integer("top_k", _D.top_k, "top-k of the vocab rows")
flags.DEFINE_string("out", "", "JSON path (default runs/bench_parallel/<shape>.json)")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    ints = lambda values: tuple(int(v) for v in values)  # noqa: E731
    settings = parallel_bench.Settings(
        shape=FLAGS.shape,
        draft_shapes=tuple(FLAGS.draft_shapes),
        draft_shape=FLAGS.draft_shape,
        draft_sharding=tuple(FLAGS.draft_sharding),
        shard_drafter=FLAGS.shard_drafter,
        tp=ints(FLAGS.tp),
        sections=tuple(FLAGS.sections),
        step_tokens=ints(FLAGS.step_tokens),
        context=FLAGS.context,
        ar_batches=ints(FLAGS.ar_batches),
        spec_batches=ints(FLAGS.spec_batches),
        full_grid_batches=ints(FLAGS.full_grid_batches),
        prompt_len=FLAGS.prompt_len,
        max_new_tokens=FLAGS.max_new_tokens,
        dp_batch=FLAGS.dp_batch,
        gamma=FLAGS.gamma,
        alpha=FLAGS.alpha,
        accept_from=FLAGS.accept_from,
        repeats=FLAGS.repeats,
        dtype=FLAGS.dtype,
        temperature=FLAGS.temperature,
        top_k=FLAGS.top_k,
    )
    try:
        result = parallel_bench.run(settings)
    except ValueError as error:  # bad shapes / sections / tp / gamma: a usage message
        raise app.UsageError(str(error)) from None
    path = parallel_bench.write_json(
        result, FLAGS.out or f"runs/bench_parallel/{settings.shape}.json"
    )
    print(parallel_bench.markdown(result))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    console.run(main)
