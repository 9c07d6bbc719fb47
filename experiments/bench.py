"""GPU benchmark: specjax vs its own autoregressive baseline, vs the floor, vs HF transformers.

    python -m experiments.bench --suites=real,hf --gguf=PATH --prompt_dir=DIR --out=DIR \
        --drafter=ngram:gamma=8 --drafter=eagle:heads=DIR,gamma=3
    python -m experiments.bench --suites=synthetic --accept_json=FILE --out=DIR
    python -m experiments.bench --report=DIR/bench_real.json   # tables + plots of a real run

Writes <out>/bench_<suite><tag>.json and prints markdown tables. Batch 1 decodes every prompt
alone (--prompts_per_set of each of --sets, each set timed on its own, then pooled exactly:
specjax/bench/drafters.py); larger batches decode the first B prompts of all sets together.
Rows stop at the tokenizer's EOS (--noeos: always --max_new_tokens). Drafters: specs of
`specjax.drafters.registry` (repeat --drafter).
XLA flags (e.g. CUDA-graph command buffers) are the environment's XLA_FLAGS, recorded in the
JSON; `experiments/bench_opt.py` runs this command under several of them.
Logic: specjax/bench/speedup.py and specjax/bench/drafters.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import flags

from specjax import console
from specjax.bench import speedup
from specjax.bench import steps as bench_steps
from specjax.fileio import atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_list("suites", ["real"], "real, hf, synthetic")
flags.DEFINE_string("gguf", "smollm2-135m-instruct", "model name or .gguf path (real, hf)")
flags.DEFINE_string("prompt_dir", None, "folder with HumanEval.jsonl.gz and question.jsonl")
flags.DEFINE_string("out", "runs/bench", "output folder")
flags.DEFINE_list("batches", ["1", "8", "32"], "batch sizes (real suite)")
flags.DEFINE_list("temperatures", ["0", "1"], "temperatures (real suite)")
flags.DEFINE_integer("max_new_tokens", 128, "tokens per row")
flags.DEFINE_integer("repeats", 5, "timed repeats after the compile call")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "weights and KV cache (real)")
flags.DEFINE_multi_string(
    "drafter",
    ["ngram:gamma=4", "ngram:gamma=8", "early-exit:gamma=3"],
    "drafter spec kind[:key=value,...] (repeat the flag); see specjax.drafters.registry",
)
flags.DEFINE_integer("prompts_per_set", 16, "prompts of each set (real suite)")
flags.DEFINE_list("sets", ["humaneval", "mt_bench"], "prompt sets: mt_bench, humaneval, gsm8k")
flags.DEFINE_bool(
    "weights_cache",
    False,
    "read/write the converted-weight cache (worth it when another run of the same dtype "
    "converted the model already, e.g. training)",
)
flags.DEFINE_bool("eos", True, "rows stop at the tokenizer's EOS (real suite)")
flags.DEFINE_string("report", "", "print the tables and plots of a bench_real JSON, then exit")
flags.DEFINE_string("title", "", "plot title of --report (default: the model file name)")
flags.DEFINE_bool(
    "untimed",
    False,
    "--report of an exactness run (repeats=0) written before results recorded it: its tables "
    "and plots show no speed (its calls compiled)",
)
flags.DEFINE_integer("prompt_bucket", 512, "prompts are padded to a multiple of this")
flags.DEFINE_string("tag", "", "suffix of the output file names")
flags.DEFINE_list(
    "full_grid_batches",
    ["1"],
    "batches at which every --drafter runs (real suite); at the other batches only the first",
)
flags.DEFINE_string(
    "trace_dir",
    "",
    "trace one call of every real-suite row with jax.profiler into this folder; the row's "
    "'trace' holds the device time (busy ms and kernels per verification call, top kernels)",
)
flags.DEFINE_string(
    "accept_json",
    None,
    "acceptance to replay: a JSON with accept_length_probs, a runner generations.jsonl, or "
    "BENCH.json#NAME (a bench row's pooled greedy acceptance)",
)
flags.DEFINE_float("alpha", 0.8, "i.i.d. acceptance when no --accept_json is given")
flags.DEFINE_list("synthetic_targets", ["qwen2.5-1.5b", "qwen2.5-7b", "llama3-8b"], "shapes")
flags.DEFINE_list("synthetic_batches", ["1", "8"], "batch sizes of the synthetic suite")


TRACE_COLUMNS = ("name", "set", "batch", "iterations", "busy_ms_per_iteration",
                 "kernels_per_iteration", "busy_share_of_wall", "top_kernel")  # fmt: skip


def trace_rows(rows: list[dict]) -> list[dict]:
    """The rows' trace figures, flat: the columns of TRACE_COLUMNS."""
    out = []
    for row in rows:
        t = row["trace"]
        top = t["top_kernels"][0] if t.get("top_kernels") else {}
        out.append({
            "name": row["name"], "set": row.get("set", "all"), "batch": row["batch"],
            **{k: t.get(k) for k in TRACE_COLUMNS[3:-1]},
            "top_kernel": f"{top.get('name', '')[:40]} {100 * top.get('share', 0):.0f}%",
        })  # fmt: skip
    return out


def report(path: Path) -> None:
    from specjax.bench import drafters

    result = json.loads(path.read_text())
    rows = result["rows"]
    if FLAGS.untimed or result.get("repeats") == 0:
        rows = drafters.untimed(rows)
    sets = [s for s in dict.fromkeys(r.get("set", "all") for r in rows) if s != "all"]
    print(f"{result['model']} ({result['dtype']}), pooled over {', '.join(sets)}:")
    print(drafters.markdown(rows))
    print("\nper set:\n" + drafters.markdown(rows, sets=sets))
    if any(r["batch"] > 1 for r in rows):
        big = [r for r in rows if r["batch"] > 1]
        columns = ["name", "batch", "temperature", "gamma", "ms_per_token", "tokens_per_s",
                   "tau", "speedup", "exact"]  # fmt: skip
        print("\nbatches > 1 (all sets' prompts):\n" + speedup.markdown_table(big, columns))
    traced = [r for r in rows if r.get("trace", {}).get("device_events")]
    if traced:
        print("\ndevice time of one traced call per row (trace: jax.profiler):\n")
        print(speedup.markdown_table(trace_rows(traced), TRACE_COLUMNS))
    title = FLAGS.title or f"{Path(result['model']).stem}, {result['dtype']}"
    for plot_path in drafters.plot(rows, path.with_suffix(".png"), title):
        print(f"plot: {plot_path}")


def main(argv):
    del argv
    if FLAGS.report:
        return report(Path(FLAGS.report))
    from specjax import checkpoints, tokenizers
    from specjax.bench import drafters as drafters_bench
    from specjax.decoding import sequence
    from specjax.models import layers
    from specjax.models.config import KNOWN_SHAPES

    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    header = {
        "device": speedup.device_description(),
        "jax": jax.__version__,
        "date": speedup.now(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "kernels": layers.kernel_policies(FLAGS.dtype),
        "prefill_width": sequence.prefill_width_in_effect(),
        "dtype": FLAGS.dtype,
    }
    bandwidth = bench_steps.measure_copy_bandwidth(4e9)
    header["copy_bandwidth_GBps"] = bandwidth / 1e9
    print(json.dumps(header))

    if {"real", "hf"} & set(FLAGS.suites):
        model, params, meta = checkpoints.load(
            FLAGS.gguf, jnp.dtype(FLAGS.dtype), cache=FLAGS.weights_cache
        )
        gguf_path = meta["path"]
        tokenizer = tokenizers.load_tokenizer(gguf_path)
        prompt_sets = drafters_bench.load_prompt_sets(
            tokenizer, FLAGS.sets, FLAGS.prompts_per_set, FLAGS.prompt_dir
        )
        prompt_ids = [ids for ids_of_set in prompt_sets.values() for ids in ids_of_set]
        eos_ids = tuple(tokenizer.eos_ids) if FLAGS.eos else ()
        header.update(eos_ids=list(eos_ids), sets=FLAGS.sets, per_set=FLAGS.prompts_per_set,
                      repeats=FLAGS.repeats)  # fmt: skip
        target = (model, model.decode_params(params))  # the decode layout, converted once
        del params
        floor = bench_steps.floor_ms(
            model.config, 1, 512, jnp.dtype(FLAGS.dtype).itemsize, bandwidth
        )
        print(f"floor at batch 1, 512 cached tokens: {floor:.3f} ms/token")

    if "real" in FLAGS.suites:
        drafters = [speedup.parse_drafter_spec(text, target) for text in FLAGS.drafter]
        real_path = out / f"bench_real{FLAGS.tag}.json"

        def save(rows, complete=False):  # after every row: a run cut short keeps its rows
            result = {**header, "suite": "real", "model": gguf_path, "floor_ms_b1": floor,
                      "complete": complete, "rows": rows}  # fmt: skip
            atomic_write(real_path, json.dumps(result, indent=1))

        batches = [int(b) for b in FLAGS.batches]
        common = dict(
            temperatures=[float(t) for t in FLAGS.temperatures],
            max_new_tokens=FLAGS.max_new_tokens, repeats=FLAGS.repeats, eos_ids=eos_ids,
            prompt_bucket=FLAGS.prompt_bucket, trace_dir=FLAGS.trace_dir or None,
        )  # fmt: skip
        rows: list[dict] = []
        if 1 in batches:
            rows = drafters_bench.suite_per_set(
                target, prompt_sets, drafters, on_row=save, **common
            )
        if [b for b in batches if b > 1]:
            done = list(rows)

            def save_batched(new_rows):
                rows[:] = done + [{**r, "set": "all"} for r in new_rows]
                save(rows)

            speedup.real_model_suite(
                target, prompt_ids, drafters, batches=[b for b in batches if b > 1],
                on_row=save_batched, full_grid_batches=[int(b) for b in FLAGS.full_grid_batches],
                **common,
            )  # fmt: skip
        save(rows, complete=True)
        report(real_path)

    if "hf" in FLAGS.suites:
        from specjax.bench.hf import hf_suite

        first = prompt_ids[:2]
        ours = speedup.time_generate("specjax_ar", target, None, first, gamma=1,
                                   max_new_tokens=FLAGS.max_new_tokens, repeats=1)  # fmt: skip
        rows = hf_suite(
            gguf_path,
            first,
            max_new_tokens=FLAGS.max_new_tokens,
            repeats=2,
            reference_tokens=[ours.token_lists[i] for i in range(len(first))],
        )
        hf_json = json.dumps({**header, "rows": rows}, indent=1)
        atomic_write(out / f"bench_hf{FLAGS.tag}.json", hf_json)
        print(speedup.markdown_table(rows, ["name", "ms_per_token", "tokens_per_s", "warmup_s"]))

    if "synthetic" in FLAGS.suites:
        gamma = 4
        if FLAGS.accept_json:
            from specjax.bench.parallel import load_acceptance

            recorded = load_acceptance(FLAGS.accept_json)
            probs, source, gamma = recorded.probs, recorded.source, recorded.gamma
        else:
            probs = speedup.geometric_accept_probs(FLAGS.alpha, gamma)
            source = f"i.i.d. alpha={FLAGS.alpha} (assumed, not recorded)"
        targets = {k: KNOWN_SHAPES[k] for k in FLAGS.synthetic_targets}
        rows = []
        synthetic_path = out / f"bench_synthetic{FLAGS.tag}.json"

        def save_synthetic(row):  # after every row: a run cut short keeps its rows
            rows.append(row)
            atomic_write(synthetic_path, json.dumps({**header, "rows": rows}, indent=1))

        draft_config = KNOWN_SHAPES["qwen2.5-0.5b"]
        for batch in [int(b) for b in FLAGS.synthetic_batches]:
            speedup.synthetic_suite(
                targets, draft_config, gamma=gamma, accept_probs=probs,
                accept_source=source, batch=batch, context=512,
                max_new_tokens=FLAGS.max_new_tokens, bandwidth=bandwidth,
                repeats=FLAGS.repeats, on_row=save_synthetic,
            )  # fmt: skip
        print(speedup.markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    console.run(main)
