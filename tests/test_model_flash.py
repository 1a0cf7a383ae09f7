"""flash-attn (bf16, CUDA) against SDPA: plain causal attention and packed documents (the varlen kernel).

These run only on a CUDA machine with flash-attn installed (``pip install 'olmo-sweeps[gpu]'``).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from model_helpers import random_ids, tiny_config

from olmo import OLMo

FLASH_OK = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not FLASH_OK, reason="needs a CUDA GPU and flash-attn")]

T = 64
# bf16 has an 8-bit mantissa: two bf16 attention kernels agree to about 1e-2 on O(1) logits.
BF16 = dict(atol=3e-2, rtol=3e-2)


def flash_and_sdpa(**overrides):
    config = tiny_config(d_model=64, n_heads=4, max_sequence_length=T, **overrides)
    torch.manual_seed(0)
    flash = OLMo(config.replace(attention_backend="flash_attn"), device="cuda").eval()
    sdpa = OLMo(config, device="cuda").eval()
    sdpa.load_state_dict(flash.state_dict())
    return flash, sdpa


@pytest.fixture
def flash_calls(monkeypatch):
    """Count the calls that really reach flash-attn (the kernel falls back to SDPA when it cannot run)."""
    import flash_attn

    calls = {"flash_attn_func": 0, "flash_attn_varlen_func": 0}
    for name in calls:
        original = getattr(flash_attn, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(flash_attn, name, spy)
    return calls


@pytest.mark.parametrize("positional", ["rope", "learned", "none"])
@pytest.mark.parametrize("n_kv_heads", [None, 1, 2])
def test_flash_attn_equals_sdpa_causal(positional, n_kv_heads, flash_calls):
    flash, sdpa = flash_and_sdpa(positional=positional, n_kv_heads=n_kv_heads)
    ids = random_ids(2, T).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = flash(ids).logits
        expected = sdpa(ids).logits
    assert flash_calls["flash_attn_func"] == flash.config.n_layers
    torch.testing.assert_close(out.float(), expected.float(), **BF16)
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in flash.parameters())


@pytest.mark.parametrize("positional", ["rope", "none"])
def test_flash_attn_varlen_equals_sdpa_documents(positional, flash_calls):
    flash, sdpa = flash_and_sdpa(positional=positional, n_kv_heads=2)
    ids = random_ids(2, T).cuda()
    doc_lens = torch.tensor([[10, 30, 24], [64, 0, 0]], device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = flash(ids, doc_lens=doc_lens, max_doc_lens=[30, 64]).logits
        expected = sdpa(ids, doc_lens=doc_lens).logits
        alone = sdpa(ids[:1, 10:40]).logits  # the second document of row 0, run by itself
    assert flash_calls["flash_attn_varlen_func"] == flash.config.n_layers
    torch.testing.assert_close(out.float(), expected.float(), **BF16)
    torch.testing.assert_close(out[0, 10:40].float(), alone[0].float(), **BF16)


def test_flash_attn_backend_in_fp32_keeps_documents(flash_calls):
    """fp32 cannot use flash-attn: the SDPA fallback must still mask across documents."""
    flash, sdpa = flash_and_sdpa(positional="rope")
    ids = random_ids(2, T).cuda()
    doc_lens = torch.tensor([[10, 30, 24], [64, 0, 0]], device="cuda")
    with torch.no_grad():
        out = flash(ids, doc_lens=doc_lens).logits
        expected = sdpa(ids, doc_lens=doc_lens).logits
    assert flash_calls["flash_attn_varlen_func"] == 0
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
