"""Qwen2.5-Coder-1.5B-Instruct drafted by Qwen2.5-Coder-0.5B-Instruct (one vocabulary).

    python -m experiments.run --config=configs/qwen_coder.py:gamma=4 --workdir=runs/qwen_g4
    python -m experiments.sweep --config=configs/qwen_coder.py --workdir=runs/qwen_sweep

The sweep is Leviathan et al.'s analysis: gamma 1..8 on the same prompts, alpha and speedup
against the cost model's prediction, per MT-Bench category. Greedy, batch 1, bfloat16: the
latency setting of the speculative-decoding literature.
"""

from specjax import experiment


def get_config(arg: str | None = None):
    config = experiment.base_config()
    config.target = "qwen2.5-coder-1.5b-instruct"
    config.drafter.kind = "model"
    config.drafter.model = "qwen2.5-coder-0.5b-instruct"
    config.gamma = 4
    config.batch_size = 1
    config.prompts.name = "mt_bench"
    config.prompts.subset = 16  # 2 per category
    config.max_new_tokens = 128
    config.dtype = "bfloat16"
    config.repeats = 3
    return experiment.finalize(config, arg)


def get_sweep(arg: str | None = None) -> list[dict]:
    del arg  # the same arg configured the base config
    return [{"gamma": g} for g in range(1, 9)]
