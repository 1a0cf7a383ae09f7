"""Every ablation axis in one place: its config field and its registry."""

from __future__ import annotations

from olmo.config import ModelConfig
from olmo.nn.activations import ACTIVATIONS
from olmo.nn.attention import ATTENTION_BACKENDS
from olmo.nn.blocks import BLOCKS
from olmo.nn.init import INIT_FNS
from olmo.nn.norms import NORMS
from olmo.nn.positional import POSITIONAL, check_backend
from olmo.registry import Registry

AXES: dict[str, Registry] = {
    "attention_backend": ATTENTION_BACKENDS,
    "positional": POSITIONAL,
    "layer_norm_type": NORMS,
    "activation_type": ACTIVATIONS,
    "init_fn": INIT_FNS,
    "block_type": BLOCKS,
}


def check_config(config: ModelConfig) -> None:
    """Every axis value is a registered name, and the chosen values can run together."""
    for field, registry in AXES.items():
        value = config.effective_positional if field == "positional" else getattr(config, field)
        registry.check(value)
    check_backend(config.effective_positional, config.attention_backend)
