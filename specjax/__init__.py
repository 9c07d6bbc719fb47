"""specjax: speculative decoding of large language models in JAX/Flax.

import specjax
target = specjax.init_model(specjax.ModelConfig(...))     # or a real checkpoint
out = specjax.generate(target, draft, prompt_ids, gamma=4, max_new_tokens=64)
"""

from specjax.api import as_drafter, as_model, generate
from specjax.decoding.drafter import Drafter
from specjax.decoding.sampling import GREEDY, Sampling
from specjax.decoding.state import GenerateOutput
from specjax.drafters.draft_model import DraftModelDrafter
from specjax.models import Model, ModelConfig, Transformer, init_model

__all__ = [
    "GREEDY",
    "DraftModelDrafter",
    "Drafter",
    "GenerateOutput",
    "Model",
    "ModelConfig",
    "Sampling",
    "Transformer",
    "as_drafter",
    "as_model",
    "generate",
    "init_model",
]
