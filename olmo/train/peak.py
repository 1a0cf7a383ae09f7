"""The MFU denominator: this machine's dense matmul throughput, measured."""

from __future__ import annotations

import functools
import statistics
import time

import torch

from olmo.nn.linear import matmul, matmul_kernels

# A matmul must be large enough to fill the device: on a GPU a 1024³ product lasts microseconds and is
# launch-bound (far under the chip's rate), so GPUs measure at 8192³.
_SIZE = {"cpu": 1024, "cuda": 8192}


@functools.cache
def measure_peak_flops(dtype: torch.dtype = torch.float32, device: str = "cpu", size: int | None = None,
                       repeats: int = 5) -> float:
    """Median FLOP/s of a square matmul (2·n³ FLOPs) after a warm-up, the best over the kernels the model's
    linear layers may use (``olmo.nn.linear.matmul_kernels``: on CPU in fp32 both MKL's sgemm and oneDNN,
    which is 2.4x faster on some CPUs); cached per process.

    ``size`` defaults to 1024 on CPU and 8192 on CUDA. On CUDA each repeat times several products between
    two synchronisations, so the launch and the synchronisation are a small part of the time."""
    kind = torch.device(device).type
    n = size or _SIZE.get(kind, 1024)
    inner = 1 if kind == "cpu" else 5
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = 0.0
    for kernel in matmul_kernels(dtype, device):
        matmul(a, b, kernel)  # warm-up (allocations, kernel selection)
        rates = []
        for _ in range(repeats):
            if kind == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(inner):
                matmul(a, b, kernel)
            if kind == "cuda":
                torch.cuda.synchronize(device)
            rates.append(inner * 2 * n**3 / (time.perf_counter() - start))
        best = max(best, statistics.median(rates))
    return best
