"""The FLOP convention of olmo/nn/flops.py against torch.utils.flop_counter on a real forward + backward.

Tolerance: exact. FlopCounterMode counts exactly the matmuls the convention counts: every nn.Linear (and the
tied head's F.linear) at 2 FLOPs per multiply-add forward and twice that backward (input and weight
gradients; block 0 also computes its input gradient because the embedding is trained), plus QK^T and AV
over the full T x T scores (the eager kernel masks, it does not skip). Embedding look-ups, norms, biases,
softmax, RoPE and GQA's repeat_interleave are not matmuls and are counted by neither. The fused SDPA
kernel is not looked into on CPU, so the count runs with attention_backend="eager".
"""

from __future__ import annotations

import pytest
import torch
from model_helpers import AXIS_COMBOS, build, combo_config, combo_id, random_ids, tiny_config
from torch.utils.flop_counter import FlopCounterMode

from olmo.nn import flops_per_token, matmul_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

B, T = 2, 16  # T = max_sequence_length, so model.num_fwd_flops (at max length) applies directly


def count_flops(model, ids):
    with FlopCounterMode(display=False) as forward:
        logits = model(ids).logits
    loss = logits.float().pow(2).mean()
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    return forward.get_total_flops(), backward.get_total_flops()


@pytest.mark.parametrize("combo", AXIS_COMBOS, ids=combo_id)
def test_flops_match_flop_counter(combo):
    config = combo_config(combo, attention_backend="eager", weight_tying=combo[0] != "gqa")
    model = build(config)
    forward, backward = count_flops(model, random_ids(B, T))
    tokens = B * T
    expected = flops_per_token(config, T)
    assert forward == expected.forward * tokens
    assert backward == expected.backward * tokens
    assert model.num_fwd_flops == expected.forward and model.num_bck_flops == expected.backward
    assert expected.total == 6 * matmul_params(config) + 12 * config.n_layers * config.n_heads * config.head_dim * T


@pytest.mark.parametrize("seq_len", [4, 9])
def test_flops_at_a_shorter_sequence(seq_len):
    config = tiny_config(attention_backend="eager", n_kv_heads=2)
    forward, backward = count_flops(build(config), random_ids(B, seq_len))
    expected = flops_per_token(config, seq_len)
    assert (forward, backward) == (expected.forward * B * seq_len, expected.backward * B * seq_len)
    assert flops_per_token(config).forward > expected.forward  # the default is max_sequence_length


@pytest.mark.parametrize("weight_tying", [True, False])
@pytest.mark.parametrize("block_type", ["sequential", "llama", "parallel"])
@pytest.mark.parametrize("n_kv_heads", [None, 1, 2])
@pytest.mark.parametrize("activation_type", ["gelu", "swiglu"])
def test_matmul_params_are_the_linear_weights_plus_the_head(weight_tying, block_type, n_kv_heads, activation_type):
    config = tiny_config(
        weight_tying=weight_tying, block_type=block_type, n_kv_heads=n_kv_heads, activation_type=activation_type
    )
    model = build(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head = model.transformer.wte.weight.numel() if weight_tying else 0  # untied: ff_out is one of the Linears
    assert matmul_params(config) == linear + head
    assert model.num_matmul_params == matmul_params(config)


def test_documented_formula():
    """6N + 12·L·H·Q·T for the README's example model, worked by hand."""
    config = tiny_config(
        d_model=256,
        n_heads=8,
        n_kv_heads=2,
        n_layers=4,
        vocab_size=4096,
        max_sequence_length=256,
        embedding_size=None,
        activation_type="swiglu",
        mlp_ratio=4,
    )
    per_layer = 256 * (256 + 2 * 64) + 256 * 256 + 256 * 1024 + 512 * 256
    n = 4 * per_layer + 256 * 4096
    assert matmul_params(config) == n
    assert flops_per_token(config, 256).total == 6 * n + 12 * 4 * 8 * 32 * 256
