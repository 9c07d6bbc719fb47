"""DistillSpec: distil SmolLM2-135M-Instruct into a tiny draft (its first 2 of 30 layers, plus
its embedding and final norm) with KL(target || draft) on the target's own answers.

    python -m experiments.train_draft --config=configs/train_distill_tiny.py \
        --workdir=runs/distill_tiny --eval

The draft starts as the untrained early-exit drafter at layer 2 and trains its 2 layers and
final norm (embedding frozen and shared in spirit; the exported draft is a full specjax model,
loadable with specjax.checkpoints.load and usable as --draft PATH). Same data as the head
configs. `:draft.init=random` starts from random layers instead. The measured run used 1024
prompts (see train_eagle_smollm.py):
    python -m experiments.train_draft --config=configs/train_distill_tiny.py:$D,\
train.num_steps=200,eval.compare=early-exit --workdir=runs/distill_tiny_1024 --eval
"""

from specjax.training import config as training_config


def get_config(arg: str | None = None):
    config = training_config.base_config()
    config.kind = "distill"
    config.target = "smollm2-135m-instruct"
    config.data.source = "sharegpt"
    config.data.num_prompts = 256
    config.data.num_eval = 16
    config.data.max_prompt_tokens = 96
    config.data.max_new_tokens = 64
    config.data.path = "runs/data/smollm2_sharegpt_256x64.npz"  # shared with the head runs
    config.draft.init = "early-exit"
    config.draft.num_layers = 2
    config.draft.trainable = "blocks"
    config.train.num_steps = 300
    config.train.batch_size = 16
    config.train.learning_rate = 5e-4
    config.train.warmup_steps = 20
    config.train.log_every = 10
    config.train.checkpoint_every = 50
    config.eval.gamma = 3
    config.eval.compare = "ngram,early-exit"
    config.eval.exit_layer = 2  # the untrained version of the same draft
    return training_config.finalize(config, arg)


def get_sweep(arg: str | None = None) -> list[dict]:
    del arg
    return [{"draft.num_layers": k, "eval.exit_layer": k} for k in (2, 4)]
