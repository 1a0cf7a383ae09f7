"""A lean single-token decode step for generation: the model's own weights, a preallocated KV cache, few ops.

Decoding one token at a time with ``OLMo.forward`` spends most of its time in per-operation overhead, not in
arithmetic: every module call, the general attention-bias construction, the multi-op RMSNorm, the RoPE table
look-ups per layer and the KV-cache concatenation cost as much as the matmuls of a small model. This module
computes exactly the same function for the decode steps (the prompt still goes through ``OLMo.forward``) with:

- a KV cache preallocated for the whole generation (one slice write per step, no concatenation);
- the attention bias built once per step (none at all without padding or ALiBi);
- RoPE's sin/cos for the step's position looked up once for all layers, the rotation as ``roll`` (NeoX
  ``rotate_half`` times ``sin`` equals ``roll`` times ``[-sin, sin]``, bit for bit);
- linear layers, norms and activations called functionally (norms and activations of unknown types are
  called through their own ``forward``);
- RMSNorm as one fused LayerNorm over [x, -x] (see ``FastDecoder._rms_norm``), equal to it up to rounding;
- on CPU, for long generations, a faster kernel for the linear layers (``choose_linear_kernel``): at one row,
  (in, out) copies of the weights, which CPU BLAS multiplies a row by faster; at 2 rows or more, oneDNN with the
  weights prepacked for that row count, which takes half the time of MKL's sgemm for such skinny products
  (benchmarks in docs/benchmarks.md). Both round differently from ``F.linear``, within 1e-5.

Models without RMSNorm decode bit for bit as ``OLMo.forward`` does where both multiply with ``F.linear`` (the
plain kernel here; ``OLMO_CPU_LINEAR=aten`` or a GPU for the model, see olmo/nn/linear.py); RMSNorm and the
other kernels move the log-probabilities by rounding only.

It covers the block types, positional schemes and norms registered today, in fp32 without autocast, on plain
(unsharded) parameters. ``fast_decode_unsupported`` names the reason when a model is outside that set, and
generation then decodes with ``OLMo.forward`` instead: a new registry entry never breaks generation, it only
decodes through the general path until it is added here. tests/test_generate.py checks this module against
``OLMo.forward`` across the axes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from olmo.nn.blocks import OLMoLlamaBlock, OLMoParallelBlock, OLMoSequentialBlock
from olmo.nn.linear import onednn_available, onednn_prepack, onednn_product
from olmo.nn.norms import LayerNorm, LowPrecisionLayerNorm, Norm, RMSNorm
from olmo.nn.positional import ALiBi, LearnedPositions, NoPositions, RotaryPositions

if TYPE_CHECKING:
    from olmo.nn.model import OLMo

NEG_INF = torch.finfo(torch.float32).min
_BLOCKS = (OLMoSequentialBlock, OLMoLlamaBlock, OLMoParallelBlock)
_POSITIONAL = (RotaryPositions, ALiBi, LearnedPositions, NoPositions)


def fast_decode_unsupported(model: OLMo) -> str | None:
    """Why ``model`` cannot use the lean decode step (None: it can)."""
    if type(model.positional) not in _POSITIONAL:
        return f"positional scheme {type(model.positional).__name__}"
    for block in model.blocks:
        if type(block) not in _BLOCKS:
            return f"block type {type(block).__name__}"
    for p in model.parameters():
        if type(p.data) is not torch.Tensor:
            return "sharded parameters"
        if p.dtype != torch.float32:
            return f"{p.dtype} parameters (the lean step is written for fp32)"
        if p.device != model.device:
            return "parameters on several devices"
    if torch.is_autocast_enabled(model.device.type):
        return "autocast"
    return None


LINEAR_KERNELS = ("plain", "transposed", "onednn")


def choose_linear_kernel(device: torch.device, rows: int, max_steps: int) -> str:
    """The fastest linear kernel for ``rows`` decoded rows (batch x beam) over ``max_steps`` steps.

    Measured on CPU (benchmarks/bench_decode_linear.py, docs/benchmarks.md): at one row, (in, out) weight copies
    take 0.74x the time of ``F.linear`` (oneDNN 1.0x) and pay for their copy after ~40-60 steps; from 2 rows on,
    oneDNN with prepacked weights takes 0.71x (2 rows) to 0.48x (32 rows) and pays for its prepacking (a few ms
    for a small model) within ~20 steps, while the (in, out) copies lose from 4 rows on. On GPUs ``F.linear`` is
    the right kernel.
    """
    if device.type != "cpu":
        return "plain"
    if rows >= 2 and max_steps >= 32 and onednn_available():
        return "onednn"
    if max_steps >= 64:
        return "transposed"
    return "plain"


class FastDecoder:
    """Decode steps for ``model`` (in eval mode) with KV caches that the caller owns and reorders."""

    def __init__(self, model: OLMo, linear: str = "plain", rows: int = 1) -> None:
        """``linear``: the kernel of the linear layers (see ``choose_linear_kernel``); "transposed" and "onednn"
        keep a copy of every linear weight for this decoder's lifetime (the weights cannot change meanwhile: a
        decoder lives for one ``generate`` call). ``rows``: the number of rows each step decodes, for which
        oneDNN prepacks the weights."""
        if linear not in LINEAR_KERNELS:
            raise ValueError(f"linear={linear!r} is invalid; allowed: {', '.join(LINEAR_KERNELS)}")
        if linear == "onednn" and not onednn_available():
            raise ValueError("linear='onednn' needs a torch build with oneDNN (torch.backends.mkldnn)")
        self.model = model
        self.linear_kernel, self.rows = linear, rows
        self._weight_copies: dict[int, torch.Tensor] = {}
        self.config = c = model.config
        self.t = model.transformer
        self.blocks = model.blocks
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.effective_n_kv_heads, c.head_dim
        self.kv_width = self.n_kv_heads * self.head_dim
        self.positional = model.positional
        self.gqa = self.n_kv_heads != self.n_heads
        self.rope_table: tuple[torch.Tensor, torch.Tensor] | None = None
        self._doubled_weights: dict[int, torch.Tensor] = {}  # RMSNorm weights as [w, w], see _rms_norm

    # ----- cache -------------------------------------------------------------------------------------
    def allocate(
        self, presents: list[tuple[torch.Tensor, torch.Tensor]], capacity: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer key and value buffers of ``capacity`` positions, holding the prompt's cache first."""
        keys, values = [], []
        for k, v in presents:
            n, h, t, d = k.shape
            kb = k.new_empty(n, h, capacity, d)
            vb = v.new_empty(n, h, capacity, d)
            kb[:, :, :t].copy_(k)
            vb[:, :, :t].copy_(v)
            keys.append(kb)
            values.append(vb)
        if isinstance(self.positional, RotaryPositions):
            sin, cos = self.positional._sin_cos(capacity, self.model.device)
            half = self.head_dim // 2
            signed_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
            self.rope_table = (cos.contiguous(), signed_sin.contiguous())
        return keys, values

    # ----- one step ------------------------------------------------------------------------------------
    def step(
        self,
        tokens: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        position: int,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Logits (N, V) of the next token after ``tokens`` (N,) placed at ``position``; writes their k/v."""
        c, t = self.config, self.t
        n = tokens.shape[0]
        length = position + 1
        x = F.embedding(tokens, t.wte.weight).unsqueeze(1)  # (N, 1, d)
        if "emb_norm" in t:
            x = self._norm(t.emb_norm, x)
        if isinstance(self.positional, LearnedPositions):
            if length > c.max_sequence_length:
                raise ValueError(
                    f"sequence of {length} positions exceeds max_sequence_length={c.max_sequence_length} "
                    "of the learned positional embeddings"
                )
            x = x + t.wpe.weight[position]

        bias = None
        if attention_mask is not None:
            bias = ((1.0 - attention_mask[:, :length].to(torch.float32)) * NEG_INF).view(n, 1, 1, length)
        if isinstance(self.positional, ALiBi):
            distance = torch.arange(position, -1, -1, device=x.device, dtype=torch.float32)  # |j - position|
            alibi = (-distance * self.positional.slopes(x.device).view(-1, 1)).view(1, -1, 1, length)
            bias = alibi if bias is None else (alibi + bias).clamp(min=NEG_INF)
        rope = None
        if self.rope_table is not None:
            rope = (self.rope_table[0][position], self.rope_table[1][position])

        for block, k_cache, v_cache in zip(self.blocks, keys, values, strict=True):
            x = self._block(block, x, k_cache, v_cache, position, bias, rope)

        x = self._norm(t.ln_f, x)
        head = t.wte if c.weight_tying else t.ff_out
        logits = self._linear(x, head.weight, None if c.weight_tying else head.bias)
        if c.scale_logits:
            logits = logits * (1 / math.sqrt(c.d_model))
        return logits[:, 0]

    def _block(self, block, x, k_cache, v_cache, position, bias, rope) -> torch.Tensor:
        norm_after = self.config.norm_after
        if type(block) is OLMoParallelBlock:
            if norm_after:
                att = self._attention(block, x, k_cache, v_cache, position, bias, rope)
                return x + self._norm(block.attn_norm, att) + self._norm(block.ff_norm, self._mlp(block, x))
            h = self._norm(block.attn_norm, x)
            return x + self._attention(block, h, k_cache, v_cache, position, bias, rope) + self._mlp(block, h)
        if norm_after:
            h = x + self._norm(block.attn_norm, self._attention(block, x, k_cache, v_cache, position, bias, rope))
            return h + self._norm(block.ff_norm, self._mlp(block, h))
        h = x + self._attention(block, self._norm(block.attn_norm, x), k_cache, v_cache, position, bias, rope)
        return h + self._mlp(block, self._norm(block.ff_norm, h))

    def _attention(self, block, x, k_cache, v_cache, position, bias, rope) -> torch.Tensor:
        n = x.shape[0]
        clip = self.config.clip_qkv
        if type(block) is OLMoLlamaBlock:
            q = self._linear(x, block.q_proj.weight, block.q_proj.bias)
            k = self._linear(x, block.k_proj.weight, block.k_proj.bias)
            v = self._linear(x, block.v_proj.weight, block.v_proj.bias)
            if clip is not None:
                q, k, v = q.clamp(-clip, clip), k.clamp(-clip, clip), v.clamp(-clip, clip)
        else:
            qkv = self._linear(x, block.att_proj.weight, block.att_proj.bias)
            if clip is not None:
                qkv = qkv.clamp(-clip, clip)
            q, k, v = qkv.split((self.config.d_model, self.kv_width, self.kv_width), dim=-1)
        if block.q_norm is not None:
            q, k = self._norm(block.q_norm, q), self._norm(block.k_norm, k)
        q = q.view(n, self.n_heads, 1, self.head_dim)  # (N, 1, H*D) -> (N, H, 1, D): T = 1 needs no transpose
        k = k.view(n, self.n_kv_heads, 1, self.head_dim)
        v = v.view(n, self.n_kv_heads, 1, self.head_dim)
        if rope is not None:
            cos, signed_sin = rope
            half = self.head_dim // 2
            q = q * cos + q.roll(half, dims=-1) * signed_sin
            k = k * cos + k.roll(half, dims=-1) * signed_sin
        length = position + 1
        k_cache[:, :, position : length].copy_(k)
        v_cache[:, :, position : length].copy_(v)
        out = F.scaled_dot_product_attention(
            q, k_cache[:, :, :length], v_cache[:, :, :length], attn_mask=bias, enable_gqa=self.gqa
        )
        out = out.reshape(n, 1, self.config.d_model)  # (N, H, 1, D) -> (N, 1, H*D): T = 1 needs no transpose
        return self._linear(out, block.attn_out.weight, block.attn_out.bias)

    def _mlp(self, block, x: torch.Tensor) -> torch.Tensor:
        h = self._linear(x, block.ff_proj.weight, block.ff_proj.bias)
        return self._linear(block.act.forward(h), block.ff_out.weight, block.ff_out.bias)

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        kernel = self.linear_kernel
        if kernel == "plain":
            return F.linear(x, weight, bias)
        copy = self._weight_copies.get(id(weight))
        if kernel == "onednn":
            if copy is None:
                copy = self._weight_copies[id(weight)] = onednn_prepack(weight, self.rows)
            return onednn_product(x, copy, bias)
        if copy is None:
            copy = self._weight_copies[id(weight)] = weight.detach().t().contiguous()
        out = torch.matmul(x, copy)
        return out if bias is None else out + bias

    def _norm(self, norm: Norm, x: torch.Tensor) -> torch.Tensor:
        """The norm's function without the module call (fp32, no autocast: see fast_decode_unsupported)."""
        kind = type(norm)
        if kind is RMSNorm:
            return self._rms_norm(norm, x)
        if kind is LayerNorm or kind is LowPrecisionLayerNorm:
            return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return norm.forward(x)

    def _rms_norm(self, norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm as one fused LayerNorm over [x, -x]: that vector has mean 0 and variance mean(x^2), so the
        first half of its LayerNorm is x * rsqrt(mean(x^2) + eps). On CPU LayerNorm is one kernel where
        ``F.rms_norm`` runs six small ops; the decode step of a small model runs 2-4 norms per layer, and this
        makes a step at batch 1 a tenth faster. Equal to RMSNorm up to rounding."""
        d = x.shape[-1]
        weight = None
        if norm.weight is not None:
            weight = self._doubled_weights.get(id(norm.weight))
            if weight is None:  # the decoder lives for one generate() call: the weights cannot change meanwhile
                weight = self._doubled_weights[id(norm.weight)] = torch.cat((norm.weight, norm.weight)).detach()
        out = F.layer_norm(torch.cat((x, -x), dim=-1), (2 * d,), weight, None, norm.eps)[..., :d]
        return out if norm.bias is None else out + norm.bias
