"""The OLMo model: embeddings -> blocks -> final norm -> logits, every piece chosen by the config.

The model knows nothing of processes, devices placement strategies, or logging; FSDP, activation
checkpointing and compile are applied from outside (olmo.distributed).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
from torch import nn

from olmo.config import ModelConfig
from olmo.nn.attention import check_flash_attn, document_ids, documents_for_varlen
from olmo.nn.blocks import BLOCKS, AttentionContext, KeyValue, OLMoBlock, OLMoBlockGroup
from olmo.nn.buffer_cache import BufferCache, causal_bias
from olmo.nn.flops import flops_per_token, matmul_params
from olmo.nn.init import init_weight
from olmo.nn.linear import Linear, linear
from olmo.nn.norms import Norm, build_norm
from olmo.nn.positional import POSITIONAL

NEG_INF = torch.finfo(torch.float32).min


class OLMoOutput(NamedTuple):
    logits: torch.Tensor  # (B, T or 1, embedding_size)
    attn_key_values: list[KeyValue] | None  # one (k, v) per layer, each (B, n_kv_heads, T_total, head_dim)
    hidden_states: tuple[torch.Tensor, ...] | None  # input of each block (group), then the output of ln_f


class OLMo(nn.Module):
    def __init__(self, config: ModelConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        config.validate()
        if config.attention_backend == "flash_attn":
            check_flash_attn()
        self.config = config
        self.__cache = BufferCache()
        self.positional = POSITIONAL.get(config.effective_positional)(config, self.__cache)
        device = device if device is not None else config.init_device
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self._build()
        if str(device) != "meta":
            self.reset_parameters()

    def _build(self) -> None:
        c = self.config
        block_cls = BLOCKS.get(c.block_type)
        blocks = [block_cls(i, c, self.positional) for i in range(c.n_layers)]
        modules: dict[str, nn.Module] = {
            "wte": nn.Embedding(c.padded_embedding_size, c.d_model),
            "emb_drop": nn.Dropout(c.embedding_dropout),
            "ln_f": build_norm(c),
        }
        if c.block_group_size > 1:
            g = c.block_group_size
            modules["block_groups"] = nn.ModuleList(
                OLMoBlockGroup(blocks[i : i + g]) for i in range(0, c.n_layers, g)
            )
        else:
            modules["blocks"] = nn.ModuleList(blocks)
        modules.update(self.positional.make_modules())
        if c.embedding_layer_norm:
            modules["emb_norm"] = build_norm(c)
        if not c.weight_tying:
            modules["ff_out"] = Linear(c.d_model, c.padded_embedding_size, bias=c.include_bias)
        self.transformer = nn.ModuleDict(modules)

    # ----- structure --------------------------------------------------------------------------------
    @property
    def blocks(self) -> list[OLMoBlock]:
        """All blocks in order, whether or not they are grouped."""
        if "block_groups" in self.transformer:
            return [b for group in self.transformer.block_groups for b in group]
        return list(self.transformer.blocks)

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every weight by ``config.init_fn``; the same seed gives the same weights."""
        c, t = self.config, self.transformer
        init_weight(t.wte, "wte", c)
        if "wpe" in t:
            init_weight(t.wpe, "wpe", c)
        if "ff_out" in t:
            init_weight(t.ff_out, "lm_head", c)
        for module in self.modules():
            if isinstance(module, Norm):
                module.reset_parameters()
        for block in self.blocks:
            for proj in block.attention_input_projections():
                init_weight(proj, "attn_in", c, block.layer_id)
            init_weight(block.attn_out, "attn_out", c, block.layer_id)
            init_weight(block.ff_proj, "ff_proj", c, block.layer_id)
            init_weight(block.ff_out, "ff_out", c, block.layer_id)

    def num_params(self, include_embedding: bool = True) -> int:
        params = self.named_parameters()
        if not include_embedding:
            params = ((n, p) for n, p in params if ".wte." not in n and ".wpe." not in n)
        return sum(p.numel() for _, p in params)

    # ----- FLOPs (see olmo.nn.flops for the convention) ---------------------------------------------
    @property
    def num_matmul_params(self) -> int:
        return matmul_params(self.config)

    @property
    def num_fwd_flops(self) -> int:
        """Forward FLOPs per token at max_sequence_length."""
        return flops_per_token(self.config).forward

    @property
    def num_bck_flops(self) -> int:
        """Backward FLOPs per token at max_sequence_length."""
        return flops_per_token(self.config).backward

    # ----- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        input_embeddings: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        attention_bias: torch.Tensor | None = None,
        past_key_values: list[KeyValue] | None = None,
        use_cache: bool = False,
        last_logits_only: bool = False,
        output_hidden_states: bool = False,
        doc_lens: torch.Tensor | None = None,
        max_doc_lens: list[int] | None = None,
    ) -> OLMoOutput:
        """OLMo's forward.

        attention_mask: (B, T_past + T), 1 = attend. attention_bias: float (added to the scores) or bool
        (False = masked), (T, T) / (1|B, 1, T, T); like OLMo it replaces the default causal mask.
        past_key_values: one (k, v) per layer from a previous call with use_cache=True.
        doc_lens: (B, max_docs) zero-padded lengths of the packed documents of each row; attention never
        crosses a document boundary.
        """
        c = self.config
        x = self.transformer.wte(input_ids) if input_embeddings is None else input_embeddings
        b, t = x.shape[:2]
        if past_key_values is not None and len(past_key_values) != c.n_layers:
            raise ValueError(f"past_key_values has {len(past_key_values)} entries; expected n_layers={c.n_layers}")
        past_length = past_key_values[0][0].shape[-2] if past_key_values is not None else 0

        if "emb_norm" in self.transformer:
            x = self.transformer.emb_norm(x)
        x = self.positional.embed(self.transformer, x, past_length)
        x = self.transformer.emb_drop(x)
        self.positional.prepare(past_length + t, x.device)

        ctx = self._attention_context(
            b, t, past_length, x.device, attention_mask, attention_bias, doc_lens, max_doc_lens
        )
        pasts: list[KeyValue | None] = list(past_key_values) if past_key_values is not None else [None] * c.n_layers
        presents: list[KeyValue | None] = []
        hidden: list[torch.Tensor] = []
        if "block_groups" in self.transformer:
            g = c.block_group_size
            for i, group in enumerate(self.transformer.block_groups):
                if output_hidden_states:
                    hidden.append(x)
                x, group_presents = group(x, ctx, pasts[i * g : (i + 1) * g], use_cache)
                presents.extend(group_presents)
        else:
            for block, layer_past in zip(self.transformer.blocks, pasts, strict=True):
                if output_hidden_states:
                    hidden.append(x)
                x, present = block(x, ctx, layer_past, use_cache)
                presents.append(present)

        if last_logits_only:
            x = x[:, -1:, :]
        x = self.transformer.ln_f(x)
        if output_hidden_states:
            hidden.append(x)
        if c.weight_tying:
            logits = linear(x, self.transformer.wte.weight)
        else:
            logits = self.transformer.ff_out(x)
        if c.scale_logits:
            logits = logits * (1 / math.sqrt(c.d_model))
        return OLMoOutput(
            logits=logits,
            attn_key_values=presents if use_cache else None,  # type: ignore[arg-type]
            hidden_states=tuple(hidden) if output_hidden_states else None,
        )

    def _attention_context(
        self,
        b: int,
        t: int,
        past_length: int,
        device: torch.device,
        attention_mask: torch.Tensor | None,
        attention_bias: torch.Tensor | None,
        doc_lens: torch.Tensor | None,
        max_doc_lens: list[int] | None,
    ) -> AttentionContext:
        """Fold causality, padding, user bias, documents and ALiBi into one additive fp32 bias.

        With none of them, the kernels run with is_causal=True and no bias (the fast path).
        """
        k_len = past_length + t
        documents = None
        fold_documents = doc_lens is not None
        if doc_lens is not None:
            if past_length:
                raise ValueError("doc_lens cannot be combined with past_key_values (decode documents one by one)")
            if attention_mask is not None or attention_bias is not None:
                raise ValueError("doc_lens cannot be combined with attention_mask or attention_bias")
            document_ids(doc_lens, t)  # validates the lengths
            if self.blocks[0].kernel.takes_documents:
                documents = documents_for_varlen(doc_lens, max_doc_lens)
                fold_documents = False

        needs_bias = (
            attention_mask is not None
            or attention_bias is not None
            or past_length > 0
            or self.positional.has_bias
            or fold_documents
        )
        if not needs_bias:
            return AttentionContext(None, True, documents, past_length)

        if attention_bias is not None:
            bias = self._user_bias(attention_bias, past_length, k_len, device)
        else:
            bias = self.__cache.get_or_build("causal_attention_bias", k_len, device, causal_bias)
            bias = bias[:, :, past_length:k_len, :k_len]
        alibi = self.positional.attention_bias(t, k_len, device)
        if alibi is not None:
            bias = bias + alibi
        if attention_mask is not None:
            if attention_mask.shape != (b, k_len):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, past + new) = "
                    f"{(b, k_len)}"
                )
            bias = bias + (1.0 - attention_mask.to(torch.float32)).view(b, 1, 1, k_len) * NEG_INF
        if fold_documents:
            ids = document_ids(doc_lens, t)
            same_doc = (ids[:, :, None] == ids[:, None, :]).unsqueeze(1)  # (B, 1, T, T)
            bias = bias + torch.where(same_doc, 0.0, NEG_INF)
        # Sums of two finfo.min overflow to -inf; keep every entry finite so fully masked rows stay NaN-free.
        return AttentionContext(bias.clamp(min=NEG_INF), False, documents, past_length)

    @staticmethod
    def _user_bias(bias: torch.Tensor, past_length: int, k_len: int, device: torch.device) -> torch.Tensor:
        if bias.dim() == 2:
            bias = bias.view(1, 1, *bias.shape)
        if bias.dim() != 4 or bias.shape[-1] < k_len or bias.shape[-2] < k_len:
            raise ValueError(
                f"attention_bias has shape {tuple(bias.shape)}; expected (S, S) or (B|1, 1, S, S) with "
                f"S >= {k_len}"
            )
        bias = bias.to(device)[:, :, past_length:k_len, :k_len]
        if bias.dtype in (torch.bool, torch.int8, torch.uint8):
            return torch.where(bias.bool(), 0.0, NEG_INF)
        return bias.to(torch.float32)

    # ----- generation (olmo.generate holds the implementation) ----------------------------------------
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_steps: int = 10,
        beam_size: int = 1,
        per_node_beam_size: int | None = None,
        sampler=None,
        min_steps: int | None = None,
        final_sequence_scorer=None,
        constraints=None,
    ):
        """Beam search / sampling from left-padded prompts with the KV cache; see ``olmo.generate.generate``.

        Returns ``OLMoGenerateOutput(token_ids (B, beam, <= max_steps), scores (B, beam))``, best beam first.
        """
        from olmo.generate import generate

        return generate(
            self, input_ids, attention_mask, max_steps=max_steps, beam_size=beam_size,
            per_node_beam_size=per_node_beam_size, sampler=sampler, min_steps=min_steps,
            final_sequence_scorer=final_sequence_scorer, constraints=constraints,
        )
