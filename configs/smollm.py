"""SmolLM2-135M-Instruct, the small real model (one 93 MB wheel): CPU runs and GPU checks.

    python -m experiments.run --config=configs/smollm.py --workdir=runs/smollm
    python -m experiments.run --config=configs/smollm.py:drafter.model=perturbed:0.05 ...

No smaller model shares its vocabulary, so by default it drafts for ITSELF: draft == target
must accept every token (alpha = 1, tau = gamma + 1) and, at c = 1, the cost model predicts
no speedup. That makes it an end-to-end check of the whole pipeline on real weights. A
``perturbed:<scale>`` draft (noisy weights) gives a tunable alpha. The real drafters of this
target (n-gram, early exit, EAGLE, Medusa) are compared in configs/smollm_drafters.py.
"""

from specjax import experiment


def get_config(arg: str | None = None):
    config = experiment.base_config()
    config.target = "smollm2-135m-instruct"
    config.drafter.kind = "model"
    config.drafter.model = "smollm2-135m-instruct"
    config.gamma = 4
    config.batch_size = 1
    config.prompts.name = "mt_bench"
    config.prompts.subset = 8  # 1 per category
    config.prompts.max_prompt_tokens = 512
    config.max_new_tokens = 64
    config.dtype = "float32"  # CPU-friendly; bfloat16 on accelerators
    config.repeats = 3
    return experiment.finalize(config, arg)


def get_sweep(arg: str | None = None) -> list[dict]:
    del arg
    return [{"gamma": g} for g in (1, 2, 4, 8)]
