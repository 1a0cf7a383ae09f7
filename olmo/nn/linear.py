"""The model's linear layers, with oneDNN's fp32 kernel on CPU where ATen's is slow.

On CPU, ``F.linear`` in fp32 calls MKL's sgemm. On the AMD EPYC machines we measured (docs/benchmarks.md) MKL
takes a code path far under the core's rate (~100 GFLOP/s a core), while oneDNN, which torch ships too, runs the
same fp32 products at ~240 GFLOP/s: forward, input-gradient and weight-gradient products all get faster. So in
fp32 on CPU (no autocast) our linear layers call ``torch.ops.mkldnn._linear_pointwise`` through a custom op
with its own backward (``olmo::onednn_linear``, which torch.compile keeps as an opaque kernel call); everywhere
else they are ``F.linear``.
The result equals ``F.linear``'s up to rounding (fp32 products summed in another order).

``OLMO_CPU_LINEAR`` picks the kernel for a process (read at the first linear layer): ``auto`` (the default:
oneDNN when this torch build has it), ``onednn`` or ``aten`` (always ``F.linear``, e.g. to compare with a model
that uses it).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

CPU_LINEAR_KERNELS = ("auto", "onednn", "aten")


@functools.cache
def onednn_available() -> bool:
    """Whether this torch build runs oneDNN's fp32 linear (CPU builds with mkldnn do)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), torch.ones(3, 2), None, "none", [], "")
        return out.shape == (1, 3) and bool(out.eq(2).all())
    except (AttributeError, RuntimeError):
        return False


_chosen: dict[str, str] = {}  # the process's kernel, decided on first use (compiled code reads it as a constant)


def cpu_linear_kernel() -> str:
    """The kernel fp32 linear layers use on CPU in this process: "onednn" or "aten" (``OLMO_CPU_LINEAR``, read
    once; ``reset_cpu_linear_kernel`` reads it again)."""
    kernel = _chosen.get("kernel")
    if kernel is None:
        kernel = _chosen["kernel"] = _kernel_from_env()
    return kernel


def reset_cpu_linear_kernel() -> None:
    """Forget the process's kernel: the next linear layer reads ``OLMO_CPU_LINEAR`` again."""
    _chosen.clear()


def _kernel_from_env() -> str:
    choice = os.environ.get("OLMO_CPU_LINEAR", "auto").strip().lower() or "auto"
    if choice not in CPU_LINEAR_KERNELS:
        raise ValueError(f"OLMO_CPU_LINEAR={choice!r} is invalid; allowed: {', '.join(CPU_LINEAR_KERNELS)}")
    if choice == "aten":
        return "aten"
    if not onednn_available():
        if choice == "onednn":
            raise ValueError("OLMO_CPU_LINEAR=onednn, but this torch build has no oneDNN (torch.backends.mkldnn)")
        return "aten"
    return "onednn"


def onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) times weight (out, in) transposed, plus bias: oneDNN's fp32 product, on a dense weight or on
    one from ``onednn_prepack``. No autograd (``linear`` has it)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_prepack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` (out, in) in oneDNN's blocked layout for products with ``rows`` rows (an opaque tensor that only
    ``onednn_product`` takes); worth it when the same weight multiplies many small batches, as in decoding."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)


# A custom op, so that torch.compile keeps it as one opaque kernel call (Inductor cannot lower oneDNN's own op
# on plain weights) and FlopCounterMode counts it through the formula registered below.
# The schema is spelled out: inferring it from the annotations, which are strings under `from __future__ import
# annotations`, is not supported by every torch in our range.
@torch.library.custom_op(
    "olmo::onednn_linear", mutates_args=(), schema="(Tensor x, Tensor weight, Tensor? bias) -> Tensor"
)
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` in fp32 on CPU through oneDNN, with its own backward."""
    return onednn_product(x, weight, bias)


@onednn_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad: torch.Tensor):
    x, weight = ctx.saved_tensors
    grad_x = grad_w = grad_b = None
    g = grad.reshape(-1, grad.shape[-1])  # (tokens, out)
    if ctx.needs_input_grad[0]:
        grad_x = onednn_linear(g, weight.t(), None).view(x.shape)  # (tokens, out) @ (out, in)
    if ctx.needs_input_grad[1]:
        x2 = x.reshape(-1, x.shape[-1])  # (tokens, in)
        # oneDNN copies a transposed input to rows first: transpose the narrower of g and x, so the LM head
        # (out = vocab) copies x (tokens, d_model), not g (tokens, vocab).
        if g.shape[1] <= x2.shape[1]:
            grad_w = onednn_linear(g.t(), x2.t(), None)  # (out, tokens) @ (tokens, in)
        else:
            grad_w = onednn_linear(x2.t(), g.t(), None).t()  # ((in, tokens) @ (tokens, out))^T
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = g.sum(0)
    return grad_x, grad_w, grad_b


onednn_linear.register_autograd(_backward, setup_context=_setup_context)


def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """2 * rows * in * out: the product's multiply-adds, as torch.utils.flop_counter counts aten.mm."""
    rows = 1
    for size in x_shape[:-1]:
        rows *= size
    return 2 * rows * x_shape[-1] * w_shape[0]


def _register_flop_formula() -> None:
    """Make ``FlopCounterMode`` count our oneDNN linear like ``aten.mm`` (it knows no formula for it)."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    if torch.ops.olmo.onednn_linear not in flop_registry:
        register_flop_formula(torch.ops.olmo.onednn_linear)(_onednn_linear_flops)


_register_flop_formula()


def _fast_path_allowed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() < 2:
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return cpu_linear_kernel() == "onednn"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through oneDNN for fp32 on CPU (see the module docstring)."""
    if _fast_path_allowed(x, weight):
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose forward is ``linear`` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def matmul_kernels(dtype: torch.dtype, device: str | torch.device = "cpu") -> list[str]:
    """The kernels a dense product of ``dtype`` may run on ``device`` in this process: "aten" (``torch.mm``)
    always, "onednn" too where our fp32 CPU linear layers use it. The MFU peak is the best of them."""
    kernels = ["aten"]
    if torch.device(device).type == "cpu" and dtype == torch.float32 and cpu_linear_kernel() == "onednn":
        kernels.append("onednn")
    return kernels


def matmul(a: torch.Tensor, b: torch.Tensor, kernel: str = "aten") -> torch.Tensor:
    """``a @ b`` (2-D) through ``kernel`` (see ``matmul_kernels``), for timing peaks; no autograd."""
    if kernel == "aten":
        return torch.mm(a, b)
    if kernel == "onednn":
        return onednn_product(a, b.t())
    raise ValueError(f"kernel={kernel!r} is invalid; allowed: aten, onednn")
