"""Train 4 Medusa heads for SmolLM2-135M-Instruct on its own answers to ShareGPT prompts.

    python -m experiments.train_draft --config=configs/train_medusa_smollm.py \
        --workdir=runs/medusa_smollm --eval

Same data as configs/train_eagle_smollm.py (one shared .npz). Head i is a residual SiLU block
on the target's feature, read out by the target's (frozen, shared) LM head and trained with
KL to the target's distribution i + 1 tokens ahead (weights 0.8^(i-1)). 4 x 0.33M trained
parameters; gamma <= 4. The measured run used 1024 prompts (see train_eagle_smollm.py):
    python -m experiments.train_draft --config=configs/train_medusa_smollm.py:$D,\
train.batch_size=16,train.num_steps=300 --workdir=runs/medusa_smollm_1024
"""

from specjax.training import config as training_config


def get_config(arg: str | None = None):
    config = training_config.base_config()
    config.kind = "medusa"
    config.target = "smollm2-135m-instruct"
    config.data.source = "sharegpt"
    config.data.num_prompts = 256
    config.data.num_eval = 16
    config.data.max_prompt_tokens = 96
    config.data.max_new_tokens = 64
    config.data.path = "runs/data/smollm2_sharegpt_256x64.npz"  # shared with the EAGLE run
    config.head.num_heads = 4
    config.train.num_steps = 200
    config.train.batch_size = 8  # H + 1 LM-head passes per position: memory
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 20
    config.train.log_every = 10
    config.train.checkpoint_every = 50
    config.eval.gamma = 3
    config.eval.compare = "ngram,early-exit"
    return training_config.finalize(config, arg)


def get_sweep(arg: str | None = None) -> list[dict]:
    del arg
    return [{"head.num_heads": h, "eval.gamma": min(h, 3)} for h in (2, 4)]
