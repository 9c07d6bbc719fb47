"""Model definitions: config, NNX layers, and the pure-function decoder."""

from specjax.models.config import KNOWN_SHAPES, ModelConfig
from specjax.models.transformer import Model, Transformer, abstract_model, init_model

__all__ = ["KNOWN_SHAPES", "Model", "ModelConfig", "Transformer", "abstract_model", "init_model"]
