"""Positional-scheme axis (``positional``): RoPE, ALiBi, learned absolute embeddings, or none (NoPE).

A scheme is a small stateless strategy with hooks the model calls; the default of each hook does
nothing, so a scheme implements only what it changes:
- ``make_modules``: parameters the scheme owns (learned: ``transformer.wpe``),
- ``prepare``: builds the tables a forward of ``length`` positions will read, before the blocks run,
- ``embed``: applied to the token embeddings,
- ``rotate``: applied to queries and new keys,
- ``attention_bias``: an additive (1, H, T, Tk) bias.
"""

from __future__ import annotations

import torch
from torch import nn

from olmo.config import ModelConfig
from olmo.errors import OLMoConfigurationError
from olmo.nn.buffer_cache import BufferCache
from olmo.registry import Registry


class PositionalScheme:
    has_bias = False
    #: attention kernels that cannot take this scheme (e.g. ALiBi needs an additive bias)
    unsupported_backends: tuple[str, ...] = ()

    def __init__(self, config: ModelConfig, cache: BufferCache) -> None:
        self.config = config
        self.cache = cache

    def make_modules(self) -> dict[str, nn.Module]:
        return {}

    def prepare(self, length: int, device: torch.device) -> None:
        """Build what ``rotate`` will read for positions < ``length``. The model calls it before its blocks,
        so compiled blocks only read the shared cache: a block that filled it would change what the next
        block's compiled code was specialised on and make it compile again."""

    def embed(self, transformer: nn.ModuleDict, x: torch.Tensor, past_length: int) -> torch.Tensor:
        return x

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, past_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def attention_bias(self, q_len: int, k_len: int, device: torch.device) -> torch.Tensor | None:
        return None


POSITIONAL: Registry[type[PositionalScheme]] = Registry("positional")


@POSITIONAL.register("none")
class NoPositions(PositionalScheme):
    """NoPE: the causal mask alone carries order."""


@POSITIONAL.register("learned")
class LearnedPositions(PositionalScheme):
    """GPT-2 style absolute embeddings ``transformer.wpe`` at positions past..past+T."""

    def make_modules(self) -> dict[str, nn.Module]:
        return {"wpe": nn.Embedding(self.config.max_sequence_length, self.config.d_model)}

    def embed(self, transformer: nn.ModuleDict, x: torch.Tensor, past_length: int) -> torch.Tensor:
        end = past_length + x.shape[1]
        if end > self.config.max_sequence_length:
            raise ValueError(
                f"sequence of {end} positions exceeds max_sequence_length={self.config.max_sequence_length} "
                "of the learned positional embeddings"
            )
        positions = torch.arange(past_length, end, device=x.device)
        return x + transformer.wpe(positions).unsqueeze(0)


@POSITIONAL.register("rope")
class RotaryPositions(PositionalScheme):
    """RoPE with the NeoX half-split rotation: ``t*cos + rotate_half(t)*sin``.

    Unlike OLMo, keys are cached already rotated (they were rotated at their absolute positions); the
    logits are identical and decoding does not re-rotate the whole cache at every step.
    """

    def _sin_cos(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        def build(n: int, dev: torch.device) -> torch.Tensor:
            dim = self.config.head_dim
            inv_freq = 1.0 / (
                self.config.rope_theta ** (torch.arange(0, dim, 2, device=dev, dtype=torch.float) / dim)
            )
            freqs = torch.outer(torch.arange(n, device=dev, dtype=torch.float), inv_freq)
            positions = torch.cat((freqs, freqs), dim=-1)
            return torch.stack((positions.sin(), positions.cos()))  # (2, n, dim)

        table = self.cache.get_or_build("rope_sin_cos", length, device, build)
        return table[0, :length], table[1, :length]

    def prepare(self, length: int, device: torch.device) -> None:
        self._sin_cos(length, device)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def _apply(self, t: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        return t * cos + self._rotate_half(t) * sin

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, past_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # q and k are (B, heads, T, head_dim) for the new positions past..past+T.
        end = past_length + q.shape[-2]
        sin, cos = self._sin_cos(end, q.device)
        sin, cos = sin[past_length:end], cos[past_length:end]
        if self.config.rope_full_precision:
            q_, k_ = q.float(), k.float()
            return self._apply(q_, sin, cos).type_as(q), self._apply(k_, sin, cos).type_as(k)
        return self._apply(q, sin.to(q.dtype), cos.to(q.dtype)), self._apply(k, sin.to(k.dtype), cos.to(k.dtype))


@POSITIONAL.register("alibi")
class ALiBi(PositionalScheme):
    """bias[h, i, j] = -|j - i| * 2^(-(h+1) * alibi_bias_max / n_heads), added to the scores."""

    has_bias = True
    unsupported_backends = ("flash_attn",)

    def slopes(self, device: torch.device) -> torch.Tensor:
        h = torch.arange(1, self.config.n_heads + 1, device=device, dtype=torch.float)
        return torch.pow(2.0, -h * self.config.alibi_bias_max / self.config.n_heads)

    def attention_bias(self, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
        def build(n: int, dev: torch.device) -> torch.Tensor:
            pos = torch.arange(n, device=dev, dtype=torch.float)
            distance = (pos.view(1, n) - pos.view(n, 1)).abs()  # (n, n)
            return -distance.view(1, 1, n, n) * self.slopes(dev).view(1, -1, 1, 1)

        bias = self.cache.get_or_build("alibi_attention_bias", k_len, device, build)
        return bias[:, :, k_len - q_len : k_len, :k_len]


def check_backend(scheme: str, backend: str) -> None:
    cls = POSITIONAL.get(scheme)
    if backend in cls.unsupported_backends:
        raise OLMoConfigurationError(
            f"positional={scheme!r} cannot run with attention_backend={backend!r} (the kernel takes no "
            "additive bias); use attention_backend 'sdpa' or 'eager'"
        )
