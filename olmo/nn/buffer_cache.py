"""Shared, non-persistent buffers (causal mask, ALiBi bias, RoPE sin/cos).

Kept in a plain dict on the model, not as registered buffers, so FSDP neither shards nor syncs them and
they never enter a state dict. Each entry is built once per (name, device), in fp32 with autocast off, and
rebuilt larger only when a longer sequence asks for it: at least twice as long, so that decoding one token
at a time rebuilds it O(log T) times rather than at every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class BufferCache(dict):
    def get_or_build(
        self,
        name: str,
        length: int,
        device: torch.device,
        build: Callable[[int, torch.device], torch.Tensor],
    ) -> torch.Tensor:
        """Return the cached tensor for ``name`` on ``device`` covering at least ``length`` positions."""
        key = (name, str(device))
        cached = self.get(key)
        if cached is not None:
            if cached[0] >= length:
                return cached[1]
            length = max(length, 2 * cached[0])
        with torch.autocast(device.type, enabled=False):
            tensor = build(length, device)
        self[key] = (length, tensor)
        return tensor


def causal_bias(length: int, device: torch.device) -> torch.Tensor:
    """(1, 1, L, L) float bias: 0 on and below the diagonal, finfo(float32).min above."""
    mask = torch.triu(torch.ones(length, length, device=device, dtype=torch.bool), diagonal=1)
    bias = torch.zeros(length, length, device=device).masked_fill(mask, torch.finfo(torch.float32).min)
    return bias.view(1, 1, length, length)
