"""A real draft/target pair: AR vs the draft model at gamma 1..8 vs prompt lookup, per prompt set.

    python -m experiments.real_pair --target=qwen2.5-coder-1.5b-instruct \
        --draft=qwen2.5-coder-0.5b-instruct --prompt_dir=DIR --per_set=8 --out=runs/real_pair

Exactness at float32 (speed figures in bfloat16, the default):
    JAX_DEFAULT_MATMUL_PRECISION=highest python -m experiments.real_pair --dtype=float32 \
        --gammas=2,5 --ngram_gammas=4 --repeats=1 --tag=_float32 ...

Writes <out>/real_pair<tag>.json (after every row) and prints the pooled table and one table
per prompt set. Logic: specjax/bench/real_pair.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from absl import flags

from specjax import console

FLAGS = flags.FLAGS
flags.DEFINE_string("target", "qwen2.5-coder-1.5b-instruct", "model name or .gguf path")
flags.DEFINE_string("draft", "qwen2.5-coder-0.5b-instruct", "draft model name or .gguf path")
flags.DEFINE_string(
    "prompt_dir", None, "folder with question.jsonl, HumanEval.jsonl.gz, test.jsonl"
)
flags.DEFINE_list("sets", ["mt_bench", "humaneval", "gsm8k"], "prompt sets")
flags.DEFINE_integer("per_set", 8, "prompts per set (hash-chosen, stratified by category)")
flags.DEFINE_list("gammas", [str(k) for k in range(1, 9)], "draft-model draft lengths")
flags.DEFINE_list("ngram_gammas", ["4", "8"], "prompt-lookup draft lengths")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "weights and KV cache")
flags.DEFINE_integer("max_new_tokens", 128, "budget per prompt (rows stop at EOS too)")
flags.DEFINE_integer("repeats", 3, "timed calls per prompt after the compile call")
flags.DEFINE_integer("prompt_bucket", 512, "every prompt is padded to this width")
flags.DEFINE_string("out", "runs/real_pair", "output folder")
flags.DEFINE_string("tag", "", "suffix of the output file name")
flags.DEFINE_string("report", "", "print the tables and plot of a real_pair JSON, then exit")
flags.DEFINE_string("title", "", "plot title (default: the model file names)")

_FILES = {"mt_bench": "question.jsonl", "humaneval": "HumanEval.jsonl.gz", "gsm8k": "test.jsonl"}


def report(path: Path) -> None:
    from specjax.bench import real_pair

    result = json.loads(path.read_text())
    rows = result["rows"]
    print(real_pair.markdown(rows))
    for name in dict.fromkeys(r["set"] for r in rows if r["set"] != "all"):
        print(f"\n{name}:\n" + real_pair.markdown(rows, sets=(name,)))
    plot_path = path.with_name(path.stem + "_speedup_vs_gamma.png")
    target, draft = Path(result["target"]).stem, Path(result["draft"]).stem
    title = FLAGS.title or f"{target} drafted by {draft}, {result['dtype']}"
    real_pair.plot(rows, plot_path, title)
    print(f"\nplot: {plot_path}")


def main(argv):
    del argv
    if FLAGS.report:
        return report(Path(FLAGS.report))
    import jax
    import jax.numpy as jnp

    from specjax import checkpoints, tokenizers
    from specjax.bench import real_pair, speedup
    from specjax.eval import prompts as prompts_lib
    from specjax.eval.prompts import load_prompts
    from specjax.models import layers

    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = jnp.dtype(FLAGS.dtype)
    # No converted-weight cache: one run per dtype, and the disk write would cost more.
    target_model, target_params, meta = checkpoints.load(FLAGS.target, dtype, cache=False)
    draft_model, draft_params, _ = checkpoints.load(FLAGS.draft, dtype, cache=False)
    # Decode layout once; drop the storage copies (one copy of the weights on the device).
    target = (target_model, target_model.decode_params(target_params))
    draft = (draft_model, draft_model.decode_params(draft_params))
    del target_params, draft_params
    tokenizer = tokenizers.load_tokenizer(meta["path"])
    prompt_sets = {}
    for name in FLAGS.sets:
        path = os.path.join(FLAGS.prompt_dir, _FILES[name]) if FLAGS.prompt_dir else None
        prompts = load_prompts(name, subset=FLAGS.per_set, seed=0, path=path)
        prompt_sets[name] = prompts_lib.chat_prompt_ids(tokenizer, [p.text for p in prompts])
    gammas = [int(k) for k in FLAGS.gammas]
    ngram_gammas = [int(k) for k in FLAGS.ngram_gammas]
    costs = real_pair.step_costs(
        target, draft, gammas + ngram_gammas, context=FLAGS.prompt_bucket,
        trace_root=Path(tempfile.mkdtemp(prefix="specjax_pair_trace_")),
    )  # fmt: skip
    header = {
        "target": meta["path"], "draft": FLAGS.draft, "dtype": FLAGS.dtype,
        "device": speedup.device_description(), "jax": jax.__version__,
        "kernels": layers.kernel_policies(FLAGS.dtype), "date": speedup.now(),
        "matmul_precision": os.environ.get("JAX_DEFAULT_MATMUL_PRECISION", "default"),
        "per_set": FLAGS.per_set, "max_new_tokens": FLAGS.max_new_tokens,
        "repeats": FLAGS.repeats, "eos_ids": list(tokenizer.eos_ids),
        "step_costs_ms": {"target": costs.target_ms, "draft": costs.draft_ms,
                          "verify": costs.verify_ms, "c": costs.c},
    }  # fmt: skip
    print(json.dumps(header, default=str))
    path = out / f"real_pair{FLAGS.tag}.json"

    def save(rows, complete=False):
        path.write_text(json.dumps({**header, "complete": complete, "rows": rows}, indent=1))

    rows = real_pair.gamma_sweep(
        target, draft, prompt_sets, gammas=gammas, ngram_gammas=ngram_gammas,
        max_new_tokens=FLAGS.max_new_tokens, repeats=FLAGS.repeats,
        eos_ids=tokenizer.eos_ids, prompt_bucket=FLAGS.prompt_bucket, costs=costs, on_row=save,
    )  # fmt: skip
    save(rows, complete=True)
    report(path)


if __name__ == "__main__":
    console.run(main)
