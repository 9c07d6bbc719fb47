"""Profile a decode step and the compiled loops at a real shape (synthetic weights).

    python -m experiments.profile --shape=llama3-8b --what=step,ar,spec --out=runs/profile
    python -m experiments.profile --report=runs/profile/profile_before_llama3-8b.json,...
    python -m experiments.profile --shape=qwen2.5-1.5b --draft_shape=eagle --draft_vocab=32768 \
        --tree=dynamic:depth=4,top_k=4,nodes=12 --what=ar,spec,call --draft_weights=float,int8

Each run writes <out>/profile_<label>_<shape>.json (times, trace summary, HLO kernel counts,
floor) and prints the table; --report prints the before/after table of several such files.
XLA dumps the optimized HLO of every compiled program to <out>/hlo (kernels per layer are
counted from it): XLA reads that flag when the backend starts, so it is set here, before
jax is imported. Logic: specjax/bench/profile.py.
"""

from __future__ import annotations

import os
import sys


def _hlo_dump_dir(argv: list[str]) -> str:
    out = next((a.split("=", 1)[1] for a in argv if a.startswith("--out=")), "runs/profile")
    return os.path.join(out, "hlo")


if __name__ == "__main__":
    _DUMP = _hlo_dump_dir(sys.argv)
    os.environ["XLA_FLAGS"] = " ".join(
        [
            os.environ.get("XLA_FLAGS", ""),
            f"--xla_dump_to={_DUMP}",
            "--xla_dump_hlo_as_text",
            "--xla_dump_hlo_module_re=.*(profile_step|_autoregressive|_speculative|_tree).*",
        ]
    ).strip()

from absl import app, flags  # noqa: E402

from specjax import console  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("shape", ["llama3-8b"], "target shapes (keys of specjax.bench.parallel.SHAPES)")
flags.DEFINE_string(
    "draft_shape", "", "draft of the spec section (default per target; 'eagle': an EAGLE head)"
)
flags.DEFINE_integer("draft_vocab", 0, "with --draft_shape=eagle: draft over this many tokens")
flags.DEFINE_list(
    "draft_weights",
    ["float"],
    "with --draft_shape=eagle: time the spec (and call) sections once per setting of the head's "
    "weights, in this process beside one AR loop: float (the --dtype) and/or int8 (weight-only "
    "int8); sections spec, spec_int8, ...",
)
flags.DEFINE_list("what", ["step", "ar", "spec"], "sections: step, ar, spec, call")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "weights and KV cache")
flags.DEFINE_integer("batch", 1, "rows decoded together")
flags.DEFINE_integer("context", 512, "prompt tokens")
flags.DEFINE_integer("new_tokens", 128, "tokens generated per row")
flags.DEFINE_integer("gamma", 4, "draft length")
flags.DEFINE_list(
    "verify_tokens",
    [],
    "step section: also time verification of these many tokens (e.g. a tree's nodes + 1)",
)
flags.DEFINE_string(
    "tree",
    "",
    "spec and call sections: draft this token tree (e.g. 4,2,1,1 or "
    "dynamic:depth=5,top_k=4,nodes=16) instead of a chain of --gamma",
)
flags.DEFINE_integer("calls", 32, "call section: iterations per timed device loop")
flags.DEFINE_float("alpha", 0.8, "i.i.d. acceptance replayed when no --accept_from")
flags.DEFINE_string(
    "accept_from",
    "",
    "acceptance histogram JSON, generations.jsonl, or BENCH.json#NAME (a bench row's greedy "
    "acceptance, pooled over its sets)",
)
flags.DEFINE_integer("repeats", 5, "timed calls after the compile call")
flags.DEFINE_boolean("trace", True, "trace one call of each section with jax.profiler")
flags.DEFINE_string("label", "run", "name of this run in the tables (e.g. before, after)")
flags.DEFINE_string("out", "runs/profile", "output folder")
flags.DEFINE_boolean(
    "hf", False, "also time HF transformers (eager, static cache + torch.compile) at each shape"
)
flags.DEFINE_float(
    "bandwidth_GBps", 0.0,
    "the floor's bandwidth in GB/s (e.g. 4200 on an H200); 0 measures a device copy in this "
    "process, which moved between 3.1 and 3.8 TB/s across processes on one H200: give one "
    "figure to compare x-floor across runs",
)  # fmt: skip
flags.DEFINE_list("report", None, "print the table of these profile JSON files and exit")
flags.DEFINE_string(
    "plot_parts", "", "with --report: save a bar chart of each run's call parts here (PNG)"
)
flags.DEFINE_boolean(
    "one_call", False,
    "with --report: also list a middle call's kernels in the order they ran, by part, with "
    "the GPU's idle time before each",
)  # fmt: skip


def main(argv):
    del argv
    import json

    from specjax.bench import profile

    if FLAGS.report is not None:  # given, even empty: report, never fall through to a run
        if not FLAGS.report:
            raise app.UsageError("--report needs at least one profile JSON file")
        results = [json.loads(open(path).read()) for path in FLAGS.report]
        print(profile.markdown(results))
        if FLAGS.one_call:
            for result in results:
                print("\n" + profile.one_call_tables(result))
        if FLAGS.plot_parts:
            from specjax.experiment.plots import plot_call_parts

            plot_call_parts(profile.call_parts(results), FLAGS.plot_parts)
            print(f"plot: {FLAGS.plot_parts}")
        return
    results = []
    for shape in FLAGS.shape:
        settings = profile.ProfileSettings(
            shape=shape, draft_shape=FLAGS.draft_shape, draft_vocab=FLAGS.draft_vocab,
            draft_weights=tuple(FLAGS.draft_weights), what=tuple(FLAGS.what),
            dtype=FLAGS.dtype, batch=FLAGS.batch, context=FLAGS.context,
            new_tokens=FLAGS.new_tokens, gamma=FLAGS.gamma, alpha=FLAGS.alpha,
            verify_tokens=tuple(int(T) for T in FLAGS.verify_tokens),
            tree=FLAGS.tree, calls=FLAGS.calls,
            accept_from=FLAGS.accept_from, repeats=FLAGS.repeats, trace=FLAGS.trace,
            label=FLAGS.label,
        )  # fmt: skip
        if FLAGS.bandwidth_GBps < 0:
            raise app.UsageError(f"--bandwidth_GBps must be >= 0, got {FLAGS.bandwidth_GBps}")
        result = profile.run(
            settings, FLAGS.out, dump_dir=_hlo_dump_dir(sys.argv),
            bandwidth=FLAGS.bandwidth_GBps * 1e9 or None,
        )  # fmt: skip
        if FLAGS.hf:  # same process, same shape, after ours: one run
            from specjax.bench import hf

            result = hf.add_to_profile(result, repeats=FLAGS.repeats)
        results.append(result)
    print(profile.markdown(results))
    if FLAGS.hf:
        from specjax.bench import hf

        print(hf.markdown(results))


if __name__ == "__main__":
    console.run(main)
