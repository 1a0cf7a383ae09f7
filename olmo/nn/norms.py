"""Norm axis (``layer_norm_type``): default LayerNorm, RMSNorm and low-precision LayerNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from olmo.config import ModelConfig
from olmo.registry import Registry


class Norm(nn.Module):
    """Base: optional affine weight (starts at 1) and bias (starts at 0)."""

    def __init__(self, size: int, eps: float, elementwise_affine: bool, bias: bool) -> None:
        super().__init__()
        self.normalized_shape = (size,)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(size)) if elementwise_affine and bias else None

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, affine={self.weight is not None}"


NORMS: Registry[type[Norm]] = Registry("layer_norm_type")


@NORMS.register("default")
class LayerNorm(Norm):
    """F.layer_norm; under autocast torch runs it (and returns) in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


@NORMS.register("low_precision")
class LowPrecisionLayerNorm(Norm):
    """Under autocast, computes in the autocast dtype (saves memory); otherwise the same as default."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        dtype = torch.get_autocast_dtype(device)
        weight = self.weight.to(dtype) if self.weight is not None else None
        bias = self.bias.to(dtype) if self.bias is not None else None
        with torch.autocast(device, enabled=False):
            return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps)


@NORMS.register("rms")
class RMSNorm(Norm):
    """x * rsqrt(mean(x^2) + eps) in fp32, cast back to the input dtype, then the affine transform."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            dtype = x.dtype
            x32 = x.float()
            x = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(dtype)
        if self.weight is not None:
            x = self.weight * x
            if self.bias is not None:
                x = x + self.bias
        return x


def build_norm(config: ModelConfig, size: int | None = None, elementwise_affine: bool | None = None) -> Norm:
    affine = config.layer_norm_with_affine if elementwise_affine is None else elementwise_affine
    return NORMS.get(config.layer_norm_type)(
        size or config.d_model, config.layer_norm_eps, affine, config.effective_bias_for_layer_norm
    )
