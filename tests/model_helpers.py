"""Tiny model configs shared by the model tests (imported as a module: tests/ is on sys.path under pytest)."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from olmo import ModelConfig, OLMo

VOCAB = 100  # embedding_size 128: the padding rows of the tied head are exercised too

# The axis matrix: attention heads (n_kv_heads for n_heads=4) x positional x norm x activation x block.
ATTENTION = {"mha": None, "mqa": 1, "gqa": 2}
POSITIONAL = ("rope", "alibi", "learned", "none")
RELATIVE_POSITIONAL = ("rope", "alibi", "none")  # outputs depend only on position differences
NORMS = ("default", "rms", "low_precision")
ACTIVATIONS = ("gelu", "relu", "swiglu")
BLOCKS = ("sequential", "llama", "parallel")

AXIS_COMBOS = list(itertools.product(ATTENTION, POSITIONAL, NORMS, ACTIVATIONS, BLOCKS))


def combo_id(combo: tuple[str, ...]) -> str:
    return "-".join(combo)


def tiny_config(**overrides: Any) -> ModelConfig:
    """A 2-layer, d=32, 4-head model with every dropout off, so outputs are deterministic."""
    fields: dict[str, Any] = dict(
        d_model=32,
        n_heads=4,
        n_layers=2,
        mlp_ratio=2,
        vocab_size=VOCAB,
        embedding_size=128,
        max_sequence_length=16,
        positional="rope",
        attention_dropout=0.0,
        residual_dropout=0.0,
        embedding_dropout=0.0,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def combo_config(combo: tuple[str, str, str, str, str], **overrides: Any) -> ModelConfig:
    attention, positional, norm, activation, block = combo
    return tiny_config(
        n_kv_heads=ATTENTION[attention],
        positional=positional,
        layer_norm_type=norm,
        activation_type=activation,
        block_type=block,
        **overrides,
    )


def build(config: ModelConfig, seed: int = 0) -> OLMo:
    torch.manual_seed(seed)
    return OLMo(config).eval()


def twin(model: OLMo, **changes: Any) -> OLMo:
    """A model with ``changes`` applied to the config and the same weights (state-dict names must match)."""
    other = OLMo(model.config.replace(**changes)).eval()
    other.load_state_dict(model.state_dict())
    return other


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """fp32 tolerance for the same function computed in a different order (kernels, caches, batching)."""
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)
