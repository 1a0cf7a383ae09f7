"""Initialisation axis (``init_fn``): per-role standard deviations of OLMo's strategies, plus two more.

Every weight has a role; a strategy maps (role, layer, fan-in) to a standard deviation. Weights are drawn
from N(0, std), truncated at ±cutoff·std when the strategy has a cutoff. Biases start at 0, norm weights
at 1.

Roles: ``wte`` (token embedding, also the head when tied), ``wpe`` (learned positions), ``lm_head``
(untied ``transformer.ff_out``), ``attn_in`` (att_proj or q/k/v_proj), ``attn_out``, ``ff_proj``,
``ff_out`` (the MLP output).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from olmo.config import ModelConfig
from olmo.registry import Registry

ROLES = ("wte", "wpe", "lm_head", "attn_in", "attn_out", "ff_proj", "ff_out")


@dataclass(frozen=True)
class InitStrategy:
    #: (role, config, layer_id, fan_in) -> std
    std: Callable[[str, ModelConfig, int, int], float]
    #: cutoff factor when init_cutoff_factor is None (None = no truncation)
    default_cutoff: float | None = None

    def cutoff(self, config: ModelConfig) -> float | None:
        return config.init_cutoff_factor if config.init_cutoff_factor is not None else self.default_cutoff


INIT_FNS: Registry[InitStrategy] = Registry("init_fn")


def _normal(role: str, c: ModelConfig, layer_id: int, fan_in: int) -> float:
    if role == "wte" and c.emb_init_std is not None:
        return c.emb_init_std
    return c.init_std


def _mitchell(role: str, c: ModelConfig, layer_id: int, fan_in: int) -> float:
    if role == "wte" and c.emb_init_std is not None:
        return c.emb_init_std
    if role == "attn_out":
        return 1 / math.sqrt(2 * c.d_model * (layer_id + 1))
    if role == "ff_out":
        return 1 / math.sqrt(2 * fan_in * (layer_id + 1))
    return 1 / math.sqrt(c.d_model)


def _full_megatron(role: str, c: ModelConfig, layer_id: int, fan_in: int) -> float:
    if role == "wte":
        if c.emb_init_std is not None:
            return c.emb_init_std
        return c.init_std * (math.sqrt(c.d_model) if c.scale_emb_init else 1.0)
    if role == "lm_head":
        return 1 / math.sqrt(c.d_model)
    if role in ("attn_out", "ff_out"):
        return c.init_std / math.sqrt(2 * c.n_layers)
    return c.init_std


def _kaiming_normal(role: str, c: ModelConfig, layer_id: int, fan_in: int) -> float:
    """He init (``torch.nn.init.kaiming_normal_``, fan_in mode): gain √2 on the projections that feed a
    nonlinearity (attn_in, ff_proj), gain 1 on those that feed the residual stream or the logits."""
    if role in ("wte", "wpe"):
        return c.emb_init_std if c.emb_init_std is not None else c.init_std
    gain = math.sqrt(2.0) if role in ("attn_in", "ff_proj") else 1.0
    return gain / math.sqrt(fan_in)


def _fan_in(role: str, c: ModelConfig, layer_id: int, fan_in: int) -> float:
    """LeCun init: 1/√fan_in on every linear layer, so every projection preserves unit variance."""
    if role in ("wte", "wpe"):
        return c.emb_init_std if c.emb_init_std is not None else c.init_std
    return 1 / math.sqrt(fan_in)


INIT_FNS.register("normal")(InitStrategy(_normal))
INIT_FNS.register("mitchell")(InitStrategy(_mitchell, default_cutoff=3.0))
INIT_FNS.register("full_megatron")(InitStrategy(_full_megatron, default_cutoff=3.0))
INIT_FNS.register("kaiming_normal")(InitStrategy(_kaiming_normal))
INIT_FNS.register("fan_in")(InitStrategy(_fan_in))


@torch.no_grad()
def init_weight(module: nn.Module, role: str, config: ModelConfig, layer_id: int = 0) -> float:
    """Initialise ``module.weight`` (and zero its bias) for ``role``; returns the std used."""
    strategy = INIT_FNS.get(config.init_fn)
    weight = module.weight
    fan_in = weight.shape[1]
    std = strategy.std(role, config, layer_id, fan_in)
    cutoff = strategy.cutoff(config)
    if cutoff is None:
        nn.init.normal_(weight, mean=0.0, std=std)
    else:
        nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-cutoff * std, b=cutoff * std)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return std
