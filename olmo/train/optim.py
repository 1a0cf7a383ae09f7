"""AdamW with OLMo's parameter groups: no weight decay on norms, biases and embeddings by option."""

from __future__ import annotations

import torch
from torch import nn

from olmo.config.train import OptimConfig
from olmo.nn.norms import Norm


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    decay, no_decay = [], []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            is_norm_or_bias = isinstance(module, Norm) or name == "bias"
            is_embedding = isinstance(module, nn.Embedding) or full.endswith(("wte.weight", "wpe.weight"))
            if (is_norm_or_bias and not cfg.decay_norm_and_bias) or (is_embedding and not cfg.decay_embeddings):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over OLMo's parameter groups. ``fused`` (default: when every parameter is on a GPU) runs the
    whole update as one CUDA kernel per group; otherwise foreach, which keeps the step fast on CPU. Both work
    with FSDP2's DTensor parameters."""
    if fused is None:
        fused = all(p.device.type == "cuda" for p in model.parameters())
    impl = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(
        parameter_groups(model, cfg), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **impl
    )
