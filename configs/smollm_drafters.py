"""Every drafter on one target: SmolLM2-135M-Instruct, MT-Bench, greedy, batch 1.

    python -m experiments.sweep --config=configs/smollm_drafters.py --workdir=runs/smollm_drafters

One sweep point per drafter (see get_sweep): prompt lookup (n-gram) at gamma 4 and 8 and
with adaptive gamma, early exit after layer 10 of 30 (linear, a static token tree and an
EAGLE-2 dynamic tree), EAGLE (plain and fine-tuned with replayed drafting steps) and Medusa.
The report has one row per drafter (tau, alpha per position, speedup, exactness), per
MT-Bench category too. c is measured for the n-gram (its lookup, per drafted token) and
early-exit drafters; not for the heads.

The EAGLE and Medusa points read trained heads from runs/; validation fails, naming this,
until they exist. They are trained by (see those config files for details):

    D=data.num_prompts=1024,data.path=runs/data/smollm2_sharegpt_1024x64.npz,data.batch_size=32
    python -m experiments.train_draft --workdir=runs/eagle_smollm_1024 --eval \
        --config=configs/train_eagle_smollm.py:$D,train.num_steps=400
    python -m experiments.train_draft --workdir=runs/eagle3_smollm_1024 --eval \
        --config=configs/train_eagle_smollm.py:$D,head.unroll_steps=3,train.num_steps=100,\
head.init_from=runs/eagle_smollm_1024/drafter,train.learning_rate=3e-4,train.warmup_steps=5
    python -m experiments.train_draft --config=configs/train_medusa_smollm.py:$D,\
train.batch_size=16,train.num_steps=300 --workdir=runs/medusa_smollm_1024
"""

from specjax import experiment

EAGLE = "runs/eagle_smollm_1024/drafter"
EAGLE_FINE_TUNED = "runs/eagle3_smollm_1024/drafter"
MEDUSA = "runs/medusa_smollm_1024/drafter"


def get_config(arg: str | None = None):
    config = experiment.base_config()
    config.target = "smollm2-135m-instruct"
    config.drafter.kind = "ngram"  # every sweep point names its drafter
    config.drafter.ngram_n = 3
    config.gamma = 4
    config.batch_size = 1
    config.prompts.name = "mt_bench"
    config.prompts.subset = 16  # 2 per category
    config.prompts.max_prompt_tokens = 512
    config.max_new_tokens = 128
    config.dtype = "float32"
    config.repeats = 1
    return experiment.finalize(config, arg)


def get_sweep(arg: str | None = None) -> list[dict]:
    del arg  # the same arg configured the base config
    early_exit = {"drafter.kind": "early-exit", "drafter.exit_layer": 10}
    return [
        {"drafter.kind": "ngram", "gamma": 4},
        {"drafter.kind": "ngram", "gamma": 8},
        {"drafter.kind": "ngram", "gamma": 8, "adaptive_gamma": True},
        {**early_exit, "gamma": 3},
        # A tree's depth is its gamma (set here too, so that config.json says so).
        {**early_exit, "gamma": 3, "tree": "4,2,1"},
        {**early_exit, "gamma": 4, "tree": "dynamic:depth=4,top_k=4,nodes=16"},
        {"drafter.kind": "eagle", "drafter.heads": EAGLE, "gamma": 3},
        {"drafter.kind": "eagle", "drafter.heads": EAGLE_FINE_TUNED, "gamma": 3},
        {"drafter.kind": "medusa", "drafter.heads": MEDUSA, "gamma": 3},
    ]
