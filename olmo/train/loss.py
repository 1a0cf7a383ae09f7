"""Next-token cross-entropy with OLMo's optional z-loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, z_loss_multiplier: float | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed (not averaged) CE of predicting input_ids[:, 1:] from logits[:, :-1], and the summed z-loss.

    Sums let the trainer divide by the global token count once, so micro-batching and ranks do not change
    the result.
    """
    logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    labels = input_ids[:, 1:].reshape(-1)
    ce = F.cross_entropy(logits, labels, reduction="sum")
    z = None
    if z_loss_multiplier:
        z = z_loss_multiplier * torch.logsumexp(logits, dim=-1).pow(2).sum()
    return ce, z
