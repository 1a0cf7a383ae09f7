"""olmo-sweeps: OLMo-style language models whose every architectural axis is a switch."""

from olmo.config import ModelConfig
from olmo.errors import OLMoConfigurationError
from olmo.nn import OLMo, OLMoOutput

__all__ = ["ModelConfig", "OLMo", "OLMoOutput", "OLMoConfigurationError"]
