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
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from specjax import checkpoints, tables, tokenizers
from specjax.bench import drafters as drafters_bench
from specjax.drafters import heads
from specjax.training import data as data_lib
from specjax.training import objectives
from specjax.training.trainer import make_eval_step

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


def step1_agreement(drafter, params, data: data_lib.DraftData) -> np.ndarray:
    """bool[N, T]: at position p, whether the head's step-1 token (entry p - 2, true features,
    teacher forced) is the target's argmax from f_{p-1} (False where p < 2)."""
    out = np.zeros(data.tokens.shape, bool)
    for n in range(data.num_sequences):  # a row at a time: [T, V] float32 logits each
        hidden_1xTxD = jnp.asarray(data.hidden[n : n + 1], jnp.float32)
        tokens_1xT = jnp.asarray(data.tokens[n : n + 1])
        (predicted_1xJxD,) = objectives.eagle_passes(
            drafter, params, hidden_1xTxD[:, :-1], tokens_1xT[:, 1:], 1
        )
        config = drafter.target_config
        drafted_J = jnp.argmax(heads.lm_logits(params["io"], predicted_1xJxD[0], config), -1)
        target_J = jnp.argmax(heads.lm_logits(params["io"], hidden_1xTxD[0, 1:], config), -1)
        out[n, 2:] = np.asarray(drafted_J == target_J)[:-1]  # entry j predicts position j + 2
    return out


def drafting_check(
    target, drafter, params, data, prompts, eos_ids=(), *, gamma: int, max_new_tokens: int
) -> dict[str, float]:
    """α₁ of the head drafting (greedy, `gamma`) on `prompts`, and step 1 teacher forced at
    the positions where its drafts started, over the rows whose output equals `data`'s
    answers (greedy answers to the same prompts)."""
    import specjax

    out = specjax.generate(
        target, (drafter, params), prompts, gamma=gamma, max_new_tokens=max_new_tokens,
        eos_ids=eos_ids,
    )  # fmt: skip
    agree_NxT = step1_agreement(drafter, params, data)
    accepted, at_starts, rows = [], [], 0
    for n, (generated, drafted) in enumerate(zip(out.token_lists(), out.from_draft, strict=True)):
        g, end = int(data.gen_start[n]), int(data.lengths[n])
        if list(generated) != data.tokens[n, g:end].tolist():
            continue  # a near-tie flipped a token: positions would not line up
        rows += 1
        flags_ = np.asarray(drafted)[: len(generated)]
        # A verification call emits its accepted drafts then one target token (from_draft
        # False; the prefill's token too): the next draft starts right after each of those.
        starts = [i + 1 for i in range(len(generated) - 1) if not flags_[i]]
        accepted += [bool(flags_[s]) for s in starts]
        at_starts += [bool(agree_NxT[n, g + s]) for s in starts]
    return {
        "rows_checked": rows,
        "drafts": len(accepted),
        "alpha_1 drafting": float(np.mean(accepted)) if accepted else float("nan"),
        "step 1 at draft starts": float(np.mean(at_starts)) if at_starts else float("nan"),
    }


def set_agreement(target, drafter, head_params, prompts, eos_ids, loaded) -> dict[str, float]:
    """Per-step teacher-forced agreement of the head on the target's answers to `prompts`
    (and, with --gamma, the drafting check)."""
    data = data_lib.build_data(
        target, prompts, max_new_tokens=FLAGS.max_new_tokens, eos_ids=eos_ids,
        batch_size=len(prompts), progress=False,
    )  # fmt: skip
    loss_fn = objectives.eagle_loss(
        drafter, data.max_new_tokens, feature_noise=0.0, unroll_steps=FLAGS.steps
    )
    io = jax.tree.map(lambda x: None if x is None else jnp.asarray(x, jnp.float32),
                      heads.target_io(target[1]))  # fmt: skip
    metrics = make_eval_step(loss_fn)(
        head_params["head"], {"io": io}, data.batch(np.arange(data.num_sequences))
    )
    answer_tokens = int(np.sum(data.lengths - data.gen_start))
    out = {"prompts": len(prompts), "answer_tokens": answer_tokens}
    for k in range(1, FLAGS.steps + 1):
        out[f"step {k}"] = float(metrics["top1" if k == 1 else f"top1_{k}"])
    if FLAGS.gamma:
        check = drafting_check(
            target, drafter, loaded, data, prompts, eos_ids,
            gamma=FLAGS.gamma, max_new_tokens=FLAGS.max_new_tokens,
        )  # fmt: skip
        out.update(check)
    return out


def main(argv):
    del argv
    model, params, meta = checkpoints.load(FLAGS.target, jnp.dtype(FLAGS.dtype))
    target = (model, params)
    tokenizer = tokenizers.load_tokenizer(meta["path"])
    drafter, loaded = heads.load_heads(FLAGS.heads, model, params, target_sha256=meta.get("sha256"))
    head_params = {"head": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), loaded["head"])}
    sets = drafters_bench.load_prompt_sets(tokenizer, FLAGS.sets, FLAGS.per_set, FLAGS.prompt_dir)
    if FLAGS.heldout:
        prompts = json.loads(open(FLAGS.heldout).read())["prompts"]
        sets["held-out training prompts"] = prompts[-FLAGS.heldout_count :]
    rows = []
    for name, prompts in sets.items():
        row = {"set": name, **set_agreement(target, drafter, head_params, prompts,
                                            tuple(tokenizer.eos_ids), loaded)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    columns = list(rows[0])
    print(f"\n{FLAGS.heads} on {FLAGS.target} ({FLAGS.dtype}), teacher forced:\n")
    print(tables.markdown(columns, ([r[c] for c in columns] for r in rows),
                          lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)))  # fmt: skip


if __name__ == "__main__":
    app.run(main)
