"""Attention-kernel axis (``attention_backend``): sdpa, eager (the reference), flash_attn.

A kernel takes q (B, H, T, D) and k, v (B, H_kv, Tk, D) and returns (B, H, T, D). The model hands it
either ``is_causal=True`` and no bias (the fast path), or an additive float ``bias`` broadcastable to
(B, H, T, Tk) that already holds causality, padding, documents and ALiBi. Only kernels with
``takes_documents`` get document boundaries directly (flash-attn's varlen kernel); for the others the
model folds the documents into the bias.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from olmo.errors import OLMoConfigurationError
from olmo.registry import Registry


@dataclass
class Documents:
    """Packed-document boundaries for varlen kernels: cumulative lengths over the flattened batch."""

    cu_doc_lens: torch.Tensor  # int32, (n_docs + 1,)
    max_doc_len: int

    def mask(self, batch: int, seq_len: int) -> torch.Tensor:
        """(B, 1, T, T) bool, True = attend: causal within each document (what the varlen kernel does)."""
        cu = self.cu_doc_lens.long()
        positions = torch.arange(batch * seq_len, device=cu.device)
        ids = torch.searchsorted(cu[1:], positions, right=True).view(batch, seq_len)
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=cu.device).tril()
        return ((ids[:, :, None] == ids[:, None, :]) & causal).unsqueeze(1)


class AttentionKernel(Protocol):
    takes_documents: bool

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        bias: torch.Tensor | None,
        is_causal: bool,
        dropout_p: float,
        documents: Documents | None,
    ) -> torch.Tensor: ...


ATTENTION_BACKENDS: Registry[AttentionKernel] = Registry("attention_backend")


def _kernel(name: str, takes_documents: bool = False):
    def wrap(fn):
        fn.takes_documents = takes_documents
        return ATTENTION_BACKENDS.register(name)(fn)

    return wrap


@_kernel("eager")
def eager_attention(q, k, v, *, bias, is_causal, dropout_p, documents=None):
    """Plain math, the reference the other kernels are tested against."""
    if k.shape[1] != q.shape[1]:
        repeat = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if is_causal:
        t, tk = scores.shape[-2:]
        future = torch.ones(t, tk, dtype=torch.bool, device=q.device).triu(tk - t + 1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    if bias is not None:
        scores = scores + bias
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return torch.matmul(probs, v)


@_kernel("sdpa")
def sdpa_attention(q, k, v, *, bias, is_causal, dropout_p, documents=None):
    """PyTorch's scaled_dot_product_attention (flash/memory-efficient/math chosen by PyTorch)."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, is_causal=is_causal, dropout_p=dropout_p, enable_gqa=k.shape[1] != q.shape[1]
    )


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def check_flash_attn() -> None:
    if importlib.util.find_spec("flash_attn") is None:
        raise OLMoConfigurationError(
            "attention_backend='flash_attn' needs the flash-attn package, which is not installed "
            "(pip install 'olmo-sweeps[gpu]' on a CUDA machine); allowed here: 'sdpa', 'eager'"
        )
    if not torch.cuda.is_available():
        raise OLMoConfigurationError(
            "attention_backend='flash_attn' needs a CUDA GPU and none is visible; allowed here: 'sdpa', 'eager'"
        )


@_kernel("flash_attn", takes_documents=True)
def flash_attention(q, k, v, *, bias, is_causal, dropout_p, documents=None):
    """flash-attn 2: causal kernel, or the varlen kernel for packed documents.

    flash-attn takes neither an arbitrary bias nor fp32; those calls (padding masks, KV-cache decoding,
    fp32 runs) go to SDPA, which computes the same function (documents become a block-causal mask).
    """
    if bias is not None or q.dtype not in (torch.float16, torch.bfloat16):
        if documents is not None:  # the model left the boundaries to this kernel: keep them
            bias, is_causal = documents.mask(q.shape[0], q.shape[2]), False
        return sdpa_attention(q, k, v, bias=bias, is_causal=is_causal, dropout_p=dropout_p)
    import flash_attn

    # flash-attn's layout is (B, T, H, D); it handles GQA/MQA natively.
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if documents is None:
        out = flash_attn.flash_attn_func(q, k, v, dropout_p=dropout_p, causal=True)
    else:
        b, t = q.shape[:2]
        cu, max_len = documents.cu_doc_lens, documents.max_doc_len
        out = flash_attn.flash_attn_varlen_func(
            q.reshape(b * t, *q.shape[2:]),
            k.reshape(b * t, *k.shape[2:]),
            v.reshape(b * t, *v.shape[2:]),
            cu, cu, max_len, max_len, dropout_p=dropout_p, causal=True,
        ).view(b, t, *q.shape[2:])
    return out.transpose(1, 2)


def document_ids(doc_lens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(B, max_docs) zero-padded document lengths -> (B, T) document index of every position."""
    if doc_lens.dim() != 2:
        raise ValueError(f"doc_lens must be (batch, max_docs); got shape {tuple(doc_lens.shape)}")
    totals = doc_lens.sum(dim=1)
    if not bool((totals == seq_len).all()):
        raise ValueError(
            f"doc_lens must sum to the sequence length {seq_len} in every row; got sums {totals.tolist()}"
        )
    ids = torch.arange(doc_lens.shape[1], device=doc_lens.device)
    return torch.stack([ids.repeat_interleave(row) for row in doc_lens.long()])


def documents_for_varlen(doc_lens: torch.Tensor, max_doc_lens: list[int] | None) -> Documents:
    lengths = doc_lens.flatten()
    lengths = lengths[lengths > 0]
    cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)
    max_len = max(max_doc_lens) if max_doc_lens else int(lengths.max())
    return Documents(cu, max_len)
