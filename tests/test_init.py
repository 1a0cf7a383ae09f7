"""Initialisation: per-role, per-layer standard deviations of every init_fn, truncation, biases, norms, seeds."""

from __future__ import annotations

import math

import pytest
import torch
from model_helpers import build, tiny_config

from olmo.nn.norms import Norm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, L, FF_OUT_IN = 64, 3, 128  # swiglu: ff_proj is 4·d = 256 wide, ff_out reads half of it
INIT_STD = 0.02


def init_config(init_fn, **overrides):
    fields = dict(
        d_model=D,
        n_layers=L,
        n_heads=4,
        mlp_ratio=4,
        activation_type="swiglu",
        vocab_size=256,
        embedding_size=256,
        max_sequence_length=64,
        positional="learned",
        weight_tying=False,
        init_fn=init_fn,
    )
    fields.update(overrides)
    return tiny_config(**fields)


def roles(model):
    """(name, weight, role, layer) for every initialised weight."""
    t = model.transformer
    yield "wte", t.wte.weight, "wte", 0
    yield "wpe", t.wpe.weight, "wpe", 0
    yield "lm_head", t.ff_out.weight, "lm_head", 0
    for i, block in enumerate(model.blocks):
        for name in ("att_proj", "q_proj", "k_proj", "v_proj"):
            if hasattr(block, name):
                yield f"{i}.{name}", getattr(block, name).weight, "attn_in", i
        yield f"{i}.attn_out", block.attn_out.weight, "attn_out", i
        yield f"{i}.ff_proj", block.ff_proj.weight, "ff_proj", i
        yield f"{i}.ff_out", block.ff_out.weight, "ff_out", i


def expected_std(init_fn, role, layer, emb_init_std=None, scale_emb_init=False):
    """The documented std of each strategy, written out independently of olmo.nn.init."""
    if init_fn == "normal":
        return emb_init_std if role == "wte" and emb_init_std else INIT_STD
    if init_fn == "mitchell":
        if role == "wte" and emb_init_std:
            return emb_init_std
        if role == "attn_out":
            return 1 / math.sqrt(2 * D * (layer + 1))
        if role == "ff_out":
            return 1 / math.sqrt(2 * FF_OUT_IN * (layer + 1))
        return 1 / math.sqrt(D)
    if init_fn == "full_megatron":
        if role == "wte":
            return emb_init_std or INIT_STD * (math.sqrt(D) if scale_emb_init else 1)
        if role == "lm_head":
            return 1 / math.sqrt(D)
        if role in ("attn_out", "ff_out"):
            return INIT_STD / math.sqrt(2 * L)
        return INIT_STD
    fan_in = FF_OUT_IN if role == "ff_out" else D
    if role in ("wte", "wpe"):
        return INIT_STD
    if init_fn == "kaiming_normal":  # He: gain sqrt(2) before a nonlinearity, 1 into the residual / logits
        return (math.sqrt(2) if role in ("attn_in", "ff_proj") else 1.0) / math.sqrt(fan_in)
    assert init_fn == "fan_in"  # LeCun
    return 1 / math.sqrt(fan_in)


DEFAULT_CUTOFF = {"normal": None, "mitchell": 3.0, "full_megatron": 3.0, "kaiming_normal": None, "fan_in": None}


def truncated_std_factor(c):
    """std of N(0, 1) truncated to [-c, c] (trunc_normal_ draws from that, so its std is a bit below 1)."""
    if c is None:
        return 1.0
    pdf = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(c / math.sqrt(2))
    return math.sqrt(1 - 2 * c * pdf / mass)


def check_weights(model, init_fn, cutoff, **std_kwargs):
    for name, w, role, layer in roles(model):
        std = expected_std(init_fn, role, layer, **std_kwargs)
        n = w.numel()
        # n >= 4096 everywhere: the sample std is within ~1.1% (one s.e.), the mean within std/64.
        assert abs(w.mean().item()) < 5 * std / math.sqrt(n), f"{name}: mean {w.mean().item()}"
        assert w.std().item() == pytest.approx(std * truncated_std_factor(cutoff), rel=0.06), name
        if cutoff is not None:
            assert w.abs().max().item() <= cutoff * std * (1 + 1e-6), f"{name} exceeds the cutoff"
        elif role == "wte":  # 16384 draws: ~44 fall beyond 3 std when nothing truncates
            assert w.abs().max().item() > 3 * std, f"{name} looks truncated"


@pytest.mark.parametrize("block_type", ["sequential", "llama"])
@pytest.mark.parametrize("init_fn", list(DEFAULT_CUTOFF))
def test_init_statistics_per_role_and_layer(init_fn, block_type):
    model = build(init_config(init_fn, block_type=block_type))
    check_weights(model, init_fn, DEFAULT_CUTOFF[init_fn])


def test_cutoff_factor_truncates_normal_init():
    model = build(init_config("normal", init_cutoff_factor=2.0))
    check_weights(model, "normal", 2.0)


def test_embedding_std_options():
    model = build(init_config("normal", emb_init_std=0.1))
    check_weights(model, "normal", None, emb_init_std=0.1)
    model = build(init_config("full_megatron", scale_emb_init=True))
    assert model.transformer.wte.weight.std().item() == pytest.approx(
        INIT_STD * math.sqrt(D) * truncated_std_factor(3.0), rel=0.06
    )
    check_weights(model, "full_megatron", 3.0, scale_emb_init=True)


@pytest.mark.parametrize("init_fn", list(DEFAULT_CUTOFF))
def test_biases_zero_and_norm_weights_one(init_fn):
    model = build(init_config(init_fn, attention_layer_norm=True, embedding_layer_norm=True))
    with torch.no_grad():  # disturb everything, then re-initialise
        for p in model.parameters():
            p.uniform_(-1, 1)
    model.reset_parameters()
    norms = [m for m in model.modules() if isinstance(m, Norm)]
    assert len(norms) == 2 * L + 2 * L + 2  # attn/ff norms, q/k norms, ln_f, emb_norm
    for norm in norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 * L + 1
    for linear in linears:
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    check_weights(model, init_fn, DEFAULT_CUTOFF[init_fn])


@pytest.mark.parametrize("init_fn", list(DEFAULT_CUTOFF))
def test_seed_determines_the_weights(init_fn):
    config = tiny_config(init_fn=init_fn, positional="learned", weight_tying=False)
    a, b, other = build(config, seed=3).state_dict(), build(config, seed=3).state_dict(), build(config, seed=4)
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name
    for name, tensor in other.state_dict().items():
        if name.endswith("weight") and "norm" not in name and "ln_f" not in name:
            assert not torch.equal(tensor, a[name]), name
