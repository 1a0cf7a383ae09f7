"""Activation axis (``activation_type``): GELU, ReLU, SwiGLU.

``output_multiplier`` is the ratio of the activation's output width to its input width: ff_out's input is
``mlp_width * output_multiplier`` wide (OLMo's convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from olmo.registry import Registry


class Activation(nn.Module):
    output_multiplier: float = 1.0


ACTIVATIONS: Registry[type[Activation]] = Registry("activation_type")


@ACTIVATIONS.register("gelu")
class GELU(Activation):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


@ACTIVATIONS.register("relu")
class ReLU(Activation):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


@ACTIVATIONS.register("swiglu")
class SwiGLU(Activation):
    """The first half of the projection is "up", the second half the gate (OLMo's order)."""

    output_multiplier = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x
