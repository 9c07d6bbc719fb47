"""Draft heads trained on one GPU: EAGLE (plus its HASS / EAGLE-3 style fine-tuning with replayed
drafting steps) and Medusa, for SmolLM2-135M-Instruct and Qwen2.5-Coder-1.5B-Instruct, each on
the target's own greedy answers to ShareGPT prompts (64 held out): 8,192 x 128 tokens for
SmolLM2, 11,840 x 256 for Qwen.

    python -m experiments.train_draft --config=configs/train_heads_h200.py:qwen-eagle \
        --workdir=runs/qwen_eagle --name=eagle-qwen2.5-coder-1.5b-instruct
    python -m experiments.train_draft --workdir=runs/try \
        --config=configs/train_heads_h200.py:qwen-eagle,train.num_steps=10

The argument is a preset name, then optional overrides ("key=value,..."). Presets:

    smollm2-eagle   smollm2-hass   smollm2-medusa   qwen-eagle   qwen-hass   qwen-medusa
    qwen-eagle3, smollm2-eagle3 (EAGLE-3's multi-layer inputs, online features)

The presets of one target share one data file (data.path): the answers are generated once.
`-hass` presets fine-tune the EAGLE run's exported heads (head.init_from) with the drafting
steps replayed in training (head.unroll_steps = 3: the head is fed its own predicted features,
as at drafting time); run the `-eagle` preset first. The prompts can be tokenized ahead, on any
machine (`--prompts_only`): the file lands beside the data file. experiments/h200/heads.sh runs
the whole recipe on a lent H200 and says how the files travel there.

More data: on the first turns (11,904) the Qwen EAGLE head's held-out top-1 plateaued at 0.65
while its training loss kept falling (docs/benchmarks/h200_qwen_heads/training_qwen.png).
`data.source=sharegpt_turns` takes prompts from every ShareGPT user turn (54,111 unique, ~47,000
of them fit 128 Qwen tokens with the chat template, from a 5,000-prompt sample), e.g.
`qwen-eagle,data.source=sharegpt_turns,data.num_prompts=24064,data.path=runs/data/q24k.npz`.
With that (eleventh session, 9,000 steps) held-out top-1 reached 0.712 and the training and
held-out losses fell together (docs/benchmarks/h200_qwen_heads_24k/training_qwen_24k.png): more
steps is the lever now. `head.train_vocab=32768` scores the LM head over the 32k most frequent
answer tokens only (EAGLE-3's draft vocabulary), 0.41x the FLOPs of an EAGLE step at this shape
(`python -m experiments.train_flops`); the heads then draft over those tokens.

EAGLE-3's inputs from an EAGLE-1 head (fourteenth session: the best Qwen head, 1.90x with the
12-node tree; 65 ms a step on the H200, docs/benchmarks.md):
`qwen-eagle,head.feature_layers=eagle3,head.train_vocab=32768,head.init_from=<an EAGLE-1
drafter folder>,head.unroll_steps=2,train.learning_rate=3e-4,train.num_steps=5000` with
`data.source=sharegpt_turns,data.num_prompts=45056,data.features=online`: the head starts as the
EAGLE-1 head exactly (its fuse layer passes the last hidden state) and learns the other layers.
"""

from specjax.training import config as training_config

_SMOLLM2 = {
    "target": "smollm2-135m-instruct",
    "dtype": "bfloat16",  # the dtype the heads then draft for; heads train in float32
    "data.num_prompts": 8256,
    "data.num_eval": 64,
    "data.max_prompt_tokens": 96,
    "data.max_new_tokens": 128,
    "data.batch_size": 512,
    "data.path": "runs/data/smollm2_sharegpt_8256x128.npz",
    "train.batch_size": 64,
    "train.eval_batch_size": 64,
    "train.log_every": 100,
    "train.checkpoint_every": 500,
    "train.data_on_device": True,
}
# Qwen's chat template adds a system prompt (~20 tokens): prompts get a longer budget.
# Every ShareGPT first turn that fits it (11,936 of 15,614) and answers of up to 256 tokens:
# the fourth session's head (8,256 prompts x 128 tokens, ~1 M answer tokens) overfit, with
# held-out top-1 flat at 0.61 against 0.79 on its training batches. Its config.json is in
# docs/benchmarks/h200_drafters/runs/.
_QWEN = {
    **_SMOLLM2,
    "target": "qwen2.5-coder-1.5b-instruct",
    "data.num_prompts": 11904,
    "data.max_prompt_tokens": 128,
    "data.max_new_tokens": 256,
    "data.batch_size": 256,
    "data.path": "runs/data/qwen2.5-coder-1.5b_sharegpt_11904x256.npz",
    # [16, 384, 151,936] float32 logits are 3.7 GB per copy (teacher, head, gradients).
    "train.batch_size": 16,
    "train.eval_batch_size": 16,
}
_EAGLE = {
    "kind": "eagle",
    "train.num_steps": 4000,
    "train.learning_rate": 1e-3,
    "train.warmup_steps": 100,
    "eval.gamma": 4,
}
_HASS = {
    **_EAGLE,
    "head.unroll_steps": 3,
    "train.num_steps": 800,
    "train.learning_rate": 3e-4,
    "train.warmup_steps": 20,
}
_MEDUSA = {
    "kind": "medusa",
    "head.num_heads": 4,
    "train.num_steps": 3000,
    "train.learning_rate": 1e-3,
    "train.warmup_steps": 100,
    "eval.gamma": 4,
}
PRESETS = {
    "smollm2-eagle": {**_SMOLLM2, **_EAGLE},
    "smollm2-hass": {**_SMOLLM2, **_HASS, "head.init_from": "runs/smollm2_eagle/drafter"},
    "smollm2-medusa": {**_SMOLLM2, **_MEDUSA},
    # Step counts sized to the H200 time budgets of experiments/h200/heads.sh (~40 ms per
    # EAGLE step at batch 16 x 384 positions), so the cosine schedule ends where the run does.
    "qwen-eagle": {**_QWEN, **_EAGLE, "train.learning_rate": 5e-4, "train.num_steps": 7000},
    "qwen-hass": {
        **_QWEN,
        **_HASS,
        "head.init_from": "runs/qwen_eagle/drafter",
        "train.num_steps": 500,
    },
    "qwen-medusa": {**_QWEN, **_MEDUSA, "train.num_steps": 900},
    # EAGLE-3's inputs from scratch (the fourteenth session warm-started them from an EAGLE-1
    # head instead, see the module docstring): a low, a middle and a high layer's outputs
    # beside the last hidden state, fused by the head. Stored, those features would take
    # ~113 GB for the 24k-turn data, past a lent machine's 64 GB disk: the step computes them
    # (data.features=online). Over the 32k draft vocabulary, as the EAGLE-1 head now trains.
    "qwen-eagle3": {
        **_QWEN,
        **_EAGLE,
        "train.learning_rate": 5e-4,
        "train.num_steps": 7000,
        "head.feature_layers": "eagle3",
        "head.train_vocab": 32768,
        "data.features": "online",
    },
    # The same recipe for SmolLM2: EAGLE-3's inputs over the 32k most frequent answer tokens,
    # on every ShareGPT user turn that fits (the Qwen heads' data source), features computed
    # in the step ([43k, 224, 4 x 576] bf16 would take 44 GB stored). Run on the H200 in the
    # eighteenth session (8,000 steps, 258 s): held-out top-1 0.747, but it drafts only its
    # first token well (alpha 0.64 then 0.09) until fine-tuned with replayed steps:
    # smollm2-hass with head.feature_layers=eagle3,head.train_vocab=32768 (1,500 steps,
    # 111 s) gave 2.15x with the 12-node tree. heads.sh's line for both is in DEVELOPERS.md.
    "smollm2-eagle3": {
        **_SMOLLM2,
        **_EAGLE,
        "head.feature_layers": "eagle3",
        "head.train_vocab": 32768,
        "data.source": "sharegpt_turns",
        "data.num_prompts": 43008,  # 43,865 of the 54,111 turns fit its 96 prompt tokens
        "data.path": "runs/data/s43k.npz",
        "data.features": "online",
    },
}


def get_config(arg: str | None = None):
    preset, _, overrides = (arg or "").partition(",")
    if preset not in PRESETS:
        raise training_config.ConfigError(
            f"configs/train_heads_h200.py needs a preset, one of {sorted(PRESETS)}, "
            f"got {preset!r} (e.g. configs/train_heads_h200.py:qwen-eagle)"
        )
    config = training_config.base_config()
    settings = {**PRESETS[preset]}
    config = training_config.finalize(config, settings)
    if not overrides:
        return config
    # Overrides apply on top of the preset (finalize locks; a fresh pass re-validates).
    config.unlock()
    return training_config.finalize(config, overrides)
