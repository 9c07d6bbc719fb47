"""Train an EAGLE head for SmolLM2-135M-Instruct on its own answers to ShareGPT prompts.

    python -m experiments.train_draft --config=configs/train_eagle_smollm.py \
        --workdir=runs/eagle_smollm --eval

CPU-sized by default (~35 min on 2 shared CPU cores, data included): 256 ShareGPT prompts
(<= 96 tokens, chat template) answered greedily with <= 64 tokens, 16 held out.
The measured runs (4x the prompts: 1024, ~20 min of data and ~20 min of training on 2 CPU
cores), then the same head fine-tuned with 3 replayed drafting steps (head.unroll_steps):
    D=data.num_prompts=1024,data.path=runs/data/smollm2_sharegpt_1024x64.npz,data.batch_size=32
    python -m experiments.train_draft --workdir=runs/eagle_smollm_1024 --eval \
        --config=configs/train_eagle_smollm.py:$D,train.num_steps=400
    python -m experiments.train_draft --workdir=runs/eagle3_smollm_1024 --eval \
        --config=configs/train_eagle_smollm.py:$D,head.unroll_steps=3,train.num_steps=100,\
head.init_from=runs/eagle_smollm_1024/drafter,train.learning_rate=3e-4,train.warmup_steps=5
On a GPU raise the data and steps, e.g. data.num_prompts=8192,train.num_steps=4000.

The head is one decoder layer of the target's shape (fc([feature; embedding]) -> layer ->
feature) with the target's embedding and LM head shared and frozen; ~4.2M trained parameters.
"""

from specjax.training import config as training_config


def get_config(arg: str | None = None):
    config = training_config.base_config()
    config.kind = "eagle"
    config.target = "smollm2-135m-instruct"
    config.data.source = "sharegpt"
    config.data.num_prompts = 256
    config.data.num_eval = 16
    config.data.max_prompt_tokens = 96
    config.data.max_new_tokens = 64
    config.data.path = "runs/data/smollm2_sharegpt_256x64.npz"  # shared with the Medusa run
    config.head.cls_weight = 0.1
    config.train.num_steps = 300
    config.train.batch_size = 16
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 20
    config.train.log_every = 10
    config.train.checkpoint_every = 50
    config.eval.gamma = 3
    config.eval.compare = "ngram,early-exit"
    return training_config.finalize(config, arg)


def get_sweep(arg: str | None = None) -> list[dict]:
    del arg
    return [{"head.unroll_steps": k} for k in (1, 3)]
