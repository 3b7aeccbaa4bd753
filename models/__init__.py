"""recurlm.models: the recurrent LM families on recurlm.kernels."""
from recurlm.models.base import Block, RecurrentLM
from recurlm.models.config import ModelConfig
from recurlm.models.registry import FAMILIES, build_model, to_model_config
from recurlm.models.state import LayerState, ModelState

__all__ = ["Block", "RecurrentLM", "ModelConfig", "FAMILIES", "build_model", "to_model_config",
           "LayerState", "ModelState"]
