"""Every combination of the architectural axes builds, trains, is causal, decodes with a KV cache and pads.

attention (MHA/MQA/GQA) x positional (rope/alibi/learned/none) x norm (default/rms/low_precision)
x activation (gelu/relu/swiglu) x block (sequential/llama/parallel) = 324 tiny models, one test each.
"""

from __future__ import annotations

import pytest
import torch
from model_helpers import (
    AXIS_COMBOS,
    RELATIVE_POSITIONAL,
    assert_close,
    build,
    combo_config,
    combo_id,
    random_ids,
    twin,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

B, T, PREFIX, SHORT = 2, 10, 4, 7  # batch, full length, cached prefix, length of the shorter padded row


def check_forward_backward(model, ids):
    out = model(ids)
    assert out.logits.shape == (B, T, model.config.padded_embedding_size)
    assert torch.isfinite(out.logits).all()
    out.logits.float().pow(2).mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
    # Gradient reaches every layer: the first block's input projection is not all zero.
    assert model.blocks[0].attn_out.weight.grad.abs().sum() > 0


def check_causal(model, ids, logits):
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % model.config.vocab_size
    new_logits = model(changed).logits
    assert_close(new_logits[:, :6], logits[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(new_logits[:, 6:], logits[:, 6:])  # the change is seen from position 6 on


def check_kv_cache(model, ids, logits):
    c = model.config
    out = model(ids[:, :PREFIX], use_cache=True)
    steps = [out.logits]
    for t in range(PREFIX, T):
        out = model(ids[:, t : t + 1], past_key_values=out.attn_key_values, use_cache=True)
        steps.append(out.logits)
    assert_close(torch.cat(steps, dim=1), logits)
    assert len(out.attn_key_values) == c.n_layers
    for k, v in out.attn_key_values:
        assert k.shape == v.shape == (B, c.effective_n_kv_heads, T, c.head_dim)


def check_padding(model, ids, left: bool):
    """A padded batch gives each row the logits it has alone (pad tokens are random: they must not matter)."""
    pad = T - SHORT
    long_row, short_row = ids[0], ids[1, :SHORT]
    filler = random_ids(1, pad, seed=1)[0]
    padded = torch.cat((filler, short_row)) if left else torch.cat((short_row, filler))
    mask = torch.ones(B, T, dtype=torch.long)
    if left:
        mask[1, :pad] = 0
    else:
        mask[1, SHORT:] = 0
    logits = model(torch.stack((long_row, padded)), attention_mask=mask).logits
    real = slice(pad, T) if left else slice(0, SHORT)
    assert_close(logits[0], model(long_row[None]).logits[0])
    assert_close(logits[1, real], model(short_row[None]).logits[0])
    return torch.stack((long_row, padded)), mask


@pytest.mark.parametrize("combo", AXIS_COMBOS, ids=combo_id)
def test_axis_combination(combo):
    attention, positional, norm, activation, block = combo
    model = build(combo_config(combo))
    ids = random_ids(B, T)

    check_forward_backward(model, ids)
    with torch.no_grad():
        logits = model(ids).logits
        check_causal(model, ids, logits)
        check_kv_cache(model, ids, logits)
        padded, mask = check_padding(model, ids, left=False)
        if positional in RELATIVE_POSITIONAL:  # learned positions are absolute: left padding shifts them
            check_padding(model, ids, left=True)

        eager = twin(model, attention_backend="eager")
        assert_close(eager(ids).logits, logits)
        assert_close(eager(padded, attention_mask=mask).logits, model(padded, attention_mask=mask).logits)
