"""The MFU denominator: this machine's dense matmul throughput, measured."""

from __future__ import annotations

import functools
import statistics
import time

import torch


@functools.cache
def measure_peak_flops(dtype: torch.dtype = torch.float32, device: str = "cpu", size: int = 1024,
                       repeats: int = 5) -> float:
    """Median FLOP/s of a square matmul (2·n³ FLOPs) after a warm-up; cached per process."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    torch.matmul(a, b)  # warm-up (allocations, kernel selection)
    rates = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        rates.append(2 * size**3 / (time.perf_counter() - start))
    return statistics.median(rates)
