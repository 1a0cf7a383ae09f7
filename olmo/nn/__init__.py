"""The model layer: OLMo and the registries of its ablation axes."""

from olmo.nn.flops import FlopsPerToken, flops_per_token, matmul_params
from olmo.nn.model import OLMo, OLMoOutput

__all__ = ["OLMo", "OLMoOutput", "FlopsPerToken", "flops_per_token", "matmul_params"]
