"""olmo/nn/linear.py: the model's linear layers through oneDNN in fp32 on CPU, F.linear elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from olmo import ModelConfig, OLMo
from olmo.nn.linear import (
    Linear,
    cpu_linear_kernel,
    linear,
    matmul,
    matmul_kernels,
    onednn_available,
    reset_cpu_linear_kernel,
)

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")


@pytest.fixture(autouse=True)
def fresh_kernel_choice():
    """Each test reads OLMO_CPU_LINEAR afresh (the choice is made once per process) and leaves no choice behind."""
    reset_cpu_linear_kernel()
    yield
    reset_cpu_linear_kernel()


def _pair(shape, out: int, bias: bool):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(out, shape[-1], requires_grad=True)
    b = torch.randn(out, requires_grad=True) if bias else None
    return x, w, b


@needs_onednn
@pytest.mark.parametrize("shape", [(6, 16), (3, 5, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_equals_f_linear_with_gradients(shape, bias):
    x, w, b = _pair(shape, 8, bias)
    out = linear(x, w, b)
    assert "onednn_linear" in type(out.grad_fn).__name__
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [t for t in (x, w, b) if t is not None], grad)
    ref_out = F.linear(x, w, b)
    want = torch.autograd.grad(ref_out, [t for t in (x, w, b) if t is not None], grad)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(got, want, strict=True):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_frozen_weights_get_no_gradient_and_inputs_still_do():
    x, w, _ = _pair((4, 16), 8, False)
    w.requires_grad_(False)
    linear(x, w).sum().backward()
    assert w.grad is None
    torch.testing.assert_close(x.grad, w.sum(0).expand(4, 16), atol=1e-5, rtol=1e-5)


def test_f_linear_where_onednn_does_not_apply(monkeypatch):
    x, w, b = _pair((4, 16), 8, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: F.linear in bf16
        assert linear(x, w, b).dtype == torch.bfloat16
    assert "onednn_linear" not in type(linear(x.double(), w.double()).grad_fn).__name__  # fp64
    monkeypatch.setenv("OLMO_CPU_LINEAR", "aten")
    reset_cpu_linear_kernel()
    assert cpu_linear_kernel() == "aten" and matmul_kernels(torch.float32) == ["aten"]
    assert type(linear(x, w, b).grad_fn).__name__ == "AddmmBackward0"


def test_a_bad_kernel_name_is_refused_with_the_allowed_ones(monkeypatch):
    monkeypatch.setenv("OLMO_CPU_LINEAR", "mkl")
    with pytest.raises(ValueError, match="OLMO_CPU_LINEAR='mkl' is invalid; allowed: auto, onednn, aten"):
        cpu_linear_kernel()


@needs_onednn
def test_flop_counter_counts_the_onednn_products_like_mm():
    x, w, b = _pair((3, 5, 16), 8, True)
    with FlopCounterMode(display=False) as counter:
        linear(x, w, b).sum().backward()
    # forward 2*15*16*8, backward twice that (input and weight gradients)
    assert counter.get_total_flops() == 3 * 2 * 15 * 16 * 8


@needs_onednn
def test_matmul_kernels_compute_the_same_product():
    assert matmul_kernels(torch.float32) == ["aten", "onednn"]
    assert matmul_kernels(torch.bfloat16) == ["aten"]
    a, b = torch.randn(64, 32), torch.randn(32, 48)
    torch.testing.assert_close(matmul(a, b, "onednn"), matmul(a, b, "aten"), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="kernel='mkl' is invalid"):
        matmul(a, b, "mkl")


@needs_onednn
@pytest.mark.parametrize("tied", [True, False])
def test_a_model_trains_the_same_with_either_kernel(monkeypatch, tied):
    """Loss and every gradient of a small model (tied or untied head, biases) through oneDNN and through
    F.linear agree to rounding; the state dict keeps nn.Linear's keys."""
    config = ModelConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=64, max_sequence_length=16,
                         weight_tying=tied, include_bias=True)
    torch.manual_seed(0)
    model = OLMo(config).eval()  # no dropout: both passes see the same function
    assert all(isinstance(m, torch.nn.Linear) for m in model.modules() if isinstance(m, Linear))
    ids = torch.randint(0, 64, (2, 16))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        logits = model(ids).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.view(-1))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = loss_and_grads()
    monkeypatch.setenv("OLMO_CPU_LINEAR", "aten")
    reset_cpu_linear_kernel()
    ref_loss, ref_grads = loss_and_grads()
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
