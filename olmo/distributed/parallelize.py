"""FSDP2 wrapping, activation checkpointing and torch.compile, applied to a built OLMo model."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import checkpoint

from olmo.config.train import DistributedConfig, TrainConfig
from olmo.errors import OLMoConfigurationError
from olmo.nn.model import OLMo

_EVERY = {"one_in_two": 2, "one_in_three": 3, "one_in_four": 4, "one_in_five": 5, "one_in_eight": 8}


def _checkpoint_forward(module: nn.Module, preserve_rng_state: bool, method: str = "forward") -> None:
    """Recompute ``module.<method>`` in the backward pass instead of storing its activations."""
    original = getattr(module, method)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        return checkpoint(original, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state, **kwargs)

    # An instance attribute shadows the class method; module hooks (FSDP's) still run around it.
    object.__setattr__(module, method, wrapped)


def checkpointed_block_ids(strategy: str, n_layers: int) -> list[int]:
    """Which blocks a whole-block strategy recomputes (OLMo's rules, by global block index)."""
    if strategy == "whole_layer":
        return list(range(n_layers))
    if strategy in _EVERY:
        return [i for i in range(n_layers) if i % _EVERY[strategy] == 0]
    if strategy == "two_in_three":
        return [i for i in range(n_layers) if i % 3 != 0]
    if strategy == "three_in_four":
        return [i for i in range(n_layers) if i % 4 != 0]
    return []


def apply_activation_checkpointing(model: OLMo, strategy: str) -> None:
    if strategy == "none":
        return
    c = model.config
    preserve_rng = max(c.attention_dropout, c.residual_dropout) > 0
    if strategy == "fine_grained":
        for block in model.blocks:
            for sub in (block.attn_norm, block.ff_norm, block.act):
                if sub is not None:
                    _checkpoint_forward(sub, preserve_rng)
            _checkpoint_forward(block, preserve_rng, method="attention")
        return
    for i in checkpointed_block_ids(strategy, c.n_layers):
        _checkpoint_forward(model.blocks[i], preserve_rng)


def _fsdp_units(model: OLMo, cfg: DistributedConfig) -> list[nn.Module]:
    """Modules that become their own FSDP unit (the root always is one)."""
    strategy, blocks = cfg.fsdp_wrap, model.blocks
    if strategy == "none":
        return []
    if strategy == "by_block":
        return list(blocks)
    if strategy == "by_block_group":
        if "block_groups" not in model.transformer:
            raise OLMoConfigurationError(
                "distributed.fsdp_wrap='by_block_group' needs model.block_group_size > 1"
            )
        return list(model.transformer.block_groups)
    if strategy == "by_block_and_size":
        extra = [model.transformer.wte] + ([model.transformer.ff_out] if "ff_out" in model.transformer else [])
        # A tied wte is shared with the head and must stay in the root unit.
        extra = [m for m in extra if not (m is model.transformer.wte and model.config.weight_tying)]
        return list(blocks) + extra
    if strategy == "size_based":
        return [
            m for m in model.modules()
            if m is not model and isinstance(m, nn.Linear) and m.weight.numel() >= cfg.fsdp_min_params
        ]
    if strategy in _EVERY:
        return [b for b in blocks if b.layer_id % _EVERY[strategy] == 0]
    raise OLMoConfigurationError(f"distributed.fsdp_wrap={strategy!r} is unknown")


def apply_fsdp(model: OLMo, cfg: DistributedConfig, precision: str) -> None:
    mp = None
    if precision == "bf16" and cfg.fsdp_mixed_precision:
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kwargs = {"mp_policy": mp} if mp is not None else {}
    for unit in _fsdp_units(model, cfg):
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)


def parallelize(model: OLMo, dist_cfg: DistributedConfig, train_cfg: TrainConfig, world_size: int) -> nn.Module:
    """Activation checkpointing, then compile, then FSDP (torchtitan's order)."""
    apply_activation_checkpointing(model, dist_cfg.activation_checkpointing)
    if train_cfg.compile:
        for block in model.blocks:
            block.compile()
    if world_size > 1:
        apply_fsdp(model, dist_cfg, train_cfg.precision)
    return model
