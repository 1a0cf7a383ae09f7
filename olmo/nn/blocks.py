"""Block-type axis (``block_type``): sequential (fused QKV), llama (separate q/k/v), parallel (GPT-J).

All three share the attention path (projection -> clip -> QK-norm -> heads -> RoPE -> cache -> kernel ->
attn_out) and the MLP (ff_proj -> activation -> ff_out); they differ in how q/k/v are projected and in
how the sub-layers are wired around the residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from olmo.config import ModelConfig
from olmo.nn.activations import ACTIVATIONS
from olmo.nn.attention import ATTENTION_BACKENDS, Documents
from olmo.nn.linear import Linear
from olmo.nn.norms import Norm, build_norm
from olmo.nn.positional import PositionalScheme
from olmo.registry import Registry

KeyValue = tuple[torch.Tensor, torch.Tensor]


@dataclass
class AttentionContext:
    """What every layer needs to know about the masks of this forward pass (built once by the model)."""

    bias: torch.Tensor | None  # additive fp32 bias (B|1, H|1, T, Tk), or None with is_causal
    is_causal: bool
    documents: Documents | None
    past_length: int

    def __post_init__(self) -> None:
        self._bias_by_dtype: dict[torch.dtype, torch.Tensor] = {}

    def bias_as(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The bias in the kernel's dtype; -inf after the cast is replaced by that dtype's finfo.min."""
        if self.bias is None:
            return None
        if dtype not in self._bias_by_dtype:
            self._bias_by_dtype[dtype] = self.bias.to(dtype).clamp(min=torch.finfo(dtype).min)
        return self._bias_by_dtype[dtype]


class OLMoBlock(nn.Module):
    def __init__(self, layer_id: int, config: ModelConfig, positional: PositionalScheme) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.config = config
        self.positional = positional  # shared strategy object, not a module
        self.kernel = ATTENTION_BACKENDS.get(config.attention_backend)
        d, bias = config.d_model, config.include_bias
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.effective_n_kv_heads, config.head_dim
        self.kv_width = self.n_kv_heads * self.head_dim

        self.act = ACTIVATIONS.get(config.activation_type)()
        self.ff_proj = Linear(d, config.mlp_width, bias=bias)
        self.ff_out = Linear(int(config.mlp_width * self.act.output_multiplier), d, bias=bias)
        self.attn_out = Linear(d, d, bias=bias)
        self.attn_norm = build_norm(config)
        self.ff_norm: Norm | None = build_norm(config)
        self.q_norm: Norm | None = None
        self.k_norm: Norm | None = None
        if config.attention_layer_norm:
            affine = config.attention_layer_norm_with_affine
            self.q_norm = build_norm(config, d, elementwise_affine=affine)
            self.k_norm = build_norm(config, self.kv_width, elementwise_affine=affine)
        self.dropout = nn.Dropout(config.residual_dropout)

    # ----- pieces the block types share -------------------------------------------------------------
    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def attention_input_projections(self) -> list[nn.Linear]:
        raise NotImplementedError

    def attention(
        self, x: torch.Tensor, ctx: AttentionContext, layer_past: KeyValue | None, use_cache: bool
    ) -> tuple[torch.Tensor, KeyValue | None]:
        b, t, _ = x.shape
        q, k, v = self.project_qkv(x)
        if self.q_norm is not None:
            dtype = k.dtype
            q, k = self.q_norm(q).to(dtype), self.k_norm(k).to(dtype)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.positional.rotate(q, k, ctx.past_length)
        if layer_past is not None:
            k = torch.cat((layer_past[0], k), dim=-2)
            v = torch.cat((layer_past[1], v), dim=-2)
        present = (k, v) if use_cache else None
        dropout_p = self.config.attention_dropout if self.training else 0.0
        out = self.kernel(
            q, k, v, bias=ctx.bias_as(q.dtype), is_causal=ctx.is_causal, dropout_p=dropout_p,
            documents=ctx.documents,
        )
        out = out.transpose(1, 2).reshape(b, t, self.config.d_model)
        return self.attn_out(out), present

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff_out(self.act(self.ff_proj(x)))

    def forward(
        self, x: torch.Tensor, ctx: AttentionContext, layer_past: KeyValue | None = None, use_cache: bool = False
    ) -> tuple[torch.Tensor, KeyValue | None]:
        """Sequential wiring: attention then MLP, each around the residual (pre-norm, or OLMo-2 post-norm)."""
        if self.config.norm_after:
            att, present = self.attention(x, ctx, layer_past, use_cache)
            h = x + self.dropout(self.attn_norm(att))
            return h + self.dropout(self.ff_norm(self.mlp(h))), present
        att, present = self.attention(self.attn_norm(x), ctx, layer_past, use_cache)
        h = x + self.dropout(att)
        return h + self.dropout(self.mlp(self.ff_norm(h))), present


BLOCKS: Registry[type[OLMoBlock]] = Registry("block_type")


class FusedQKVMixin:
    """``att_proj`` = Linear(d, d + 2 * n_kv * head_dim); clip_qkv clamps the fused output."""

    def _build_fused(self: OLMoBlock) -> None:
        d = self.config.d_model
        self.att_proj = Linear(d, d + 2 * self.kv_width, bias=self.config.include_bias)

    def project_qkv(self: OLMoBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = self.att_proj(x)
        if self.config.clip_qkv is not None:
            qkv = qkv.clamp(-self.config.clip_qkv, self.config.clip_qkv)
        return qkv.split((self.config.d_model, self.kv_width, self.kv_width), dim=-1)

    def attention_input_projections(self: OLMoBlock) -> list[nn.Linear]:
        return [self.att_proj]


@BLOCKS.register("sequential")
class OLMoSequentialBlock(FusedQKVMixin, OLMoBlock):
    def __init__(self, layer_id: int, config: ModelConfig, positional: PositionalScheme) -> None:
        super().__init__(layer_id, config, positional)
        self._build_fused()


@BLOCKS.register("llama")
class OLMoLlamaBlock(OLMoBlock):
    """Separate q/k/v projections (with GQA/MQA widths, unlike the original); clip_qkv clamps each."""

    def __init__(self, layer_id: int, config: ModelConfig, positional: PositionalScheme) -> None:
        super().__init__(layer_id, config, positional)
        d, bias = config.d_model, config.include_bias
        self.q_proj = Linear(d, d, bias=bias)
        self.k_proj = Linear(d, self.kv_width, bias=bias)
        self.v_proj = Linear(d, self.kv_width, bias=bias)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.config.clip_qkv is not None:
            c = self.config.clip_qkv
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
        return q, k, v

    def attention_input_projections(self) -> list[nn.Linear]:
        return [self.q_proj, self.k_proj, self.v_proj]


@BLOCKS.register("parallel")
class OLMoParallelBlock(FusedQKVMixin, OLMoBlock):
    """GPT-J/PaLM: attention and MLP read the same normed input and are added to the residual together.

    Pre-norm uses one norm (attn_norm); with norm_after each branch output gets its own norm.
    """

    def __init__(self, layer_id: int, config: ModelConfig, positional: PositionalScheme) -> None:
        super().__init__(layer_id, config, positional)
        self._build_fused()
        if not config.norm_after:
            self.ff_norm = None

    def forward(
        self, x: torch.Tensor, ctx: AttentionContext, layer_past: KeyValue | None = None, use_cache: bool = False
    ) -> tuple[torch.Tensor, KeyValue | None]:
        if self.config.norm_after:
            att, present = self.attention(x, ctx, layer_past, use_cache)
            return x + self.dropout(self.attn_norm(att)) + self.dropout(self.ff_norm(self.mlp(x))), present
        h = self.attn_norm(x)
        att, present = self.attention(h, ctx, layer_past, use_cache)
        return x + self.dropout(att) + self.dropout(self.mlp(h)), present


class OLMoBlockGroup(nn.ModuleList):
    """``block_group_size`` consecutive blocks: a unit for FSDP wrapping and checkpointing only."""

    def forward(
        self,
        x: torch.Tensor,
        ctx: AttentionContext,
        layer_pasts: list[KeyValue | None],
        use_cache: bool,
    ) -> tuple[torch.Tensor, list[KeyValue | None]]:
        presents = []
        for block, layer_past in zip(self, layer_pasts, strict=True):
            x, present = block(x, ctx, layer_past, use_cache)
            presents.append(present)
        return x, presents
