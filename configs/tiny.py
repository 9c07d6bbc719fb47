"""A tiny RANDOM pair on synthetic prompts: tests, CPU smoke runs, the notebook's test mode.

    python -m experiments.sweep --config=configs/tiny.py --workdir=/tmp/tiny_sweep

The target has random weights (2 layers, vocabulary 128); the draft is the target with a
little noise on every weight, so most drafts are accepted but not all. Draft and target cost
the same (c = 1): the numbers exercise the machinery and say nothing about real models.
Everything compiles in seconds on a laptop CPU.
"""

from specjax import experiment


def get_config(arg: str | None = None):
    config = experiment.base_config()
    config.label = "tiny random"
    config.target = "random:tiny"
    config.drafter.kind = "model"
    config.drafter.model = "perturbed:0.2"  # alpha about 0.5
    config.gamma = 3
    config.batch_size = 2
    config.prompts.name = experiment.SYNTHETIC
    config.prompts.subset = 4  # 2 "short" + 2 "long": one batch per category
    config.max_new_tokens = 16
    config.stop_at_eos = False
    config.dtype = "float32"
    config.repeats = 2
    return experiment.finalize(config, arg)


def get_sweep(arg: str | None = None) -> list[dict]:
    del arg
    return [{"gamma": 1}, {"gamma": 3}]
