"""The decode step's linear layers per kernel and row count (olmo/generate/decoder.py ``choose_linear_kernel``).

A decode step multiplies a few rows (batch x beam) by every weight of the model once. This script times that for
the weights of bench_generate.py's model (d_model 256, 4 layers, SwiGLU, untied 4096-token head: 17 matrices,
14.7 MB fp32), one step = one product per weight, for each kernel the decoder can use:

- ``plain``: ``F.linear`` (MKL sgemm on (out, in) weights);
- ``transposed``: ``matmul`` by (in, out) copies;
- ``onednn``: oneDNN's fp32 linear on weights prepacked for the row count.

It also times making each kernel's weight copies once (what a generation pays before its first step), and prints
how many steps pay for it. Cases alternate within every round; numbers are medians over rounds.

    python benchmarks/bench_decode_linear.py                 # rows 1 2 4 8 16 32, 30 rounds
    python benchmarks/bench_decode_linear.py --quick         # rows 1 8, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from olmo.nn.linear import onednn_available, onednn_prepack, onednn_product

# (out, in) of every linear weight of bench_generate.py's model: per layer att_proj, attn_out, ff_proj, ff_out.
SHAPES = [(768, 256), (256, 256), (1024, 256), (256, 512)] * 4 + [(4096, 256)]


def weight_copies(kernel: str, weights: list[torch.Tensor], rows: int) -> list[torch.Tensor]:
    if kernel == "plain":
        return weights
    if kernel == "transposed":
        return [w.t().contiguous() for w in weights]
    return [onednn_prepack(w, rows) for w in weights]


def one_step(kernel: str, xs: list[torch.Tensor], copies: list[torch.Tensor]) -> None:
    if kernel == "plain":
        for x, w in zip(xs, copies, strict=True):
            F.linear(x, w)
    elif kernel == "transposed":
        for x, w in zip(xs, copies, strict=True):
            torch.matmul(x, w)
    else:
        for x, w in zip(xs, copies, strict=True):
            onednn_product(x, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: rows 1 and 8, 3 rounds")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10, help="steps timed together in one round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.rounds, args.steps = [1, 8], 3, 2
    torch.set_num_threads(args.threads)

    kernels = ["plain", "transposed"] + (["onednn"] if onednn_available() else [])
    torch.manual_seed(0)
    weights = [torch.randn(o, i) * 0.05 for o, i in SHAPES]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          f", {sum(w.numel() for w in weights) * 4 / 1e6:.1f} MB of fp32 weights, kernels: {', '.join(kernels)}")
    print("| rows | " + " | ".join(f"{k} ms/step" for k in kernels) + " | "
          + " | ".join(f"{k} vs plain | {k} copy ms (steps to pay)" for k in kernels[1:]) + " |")
    print("|---" * (1 + len(kernels) + 2 * (len(kernels) - 1)) + "|")
    results = []
    with torch.inference_mode():
        for rows in args.rows:
            xs = [torch.randn(rows, 1, i) for _, i in SHAPES]
            copy_ms, copies = {}, {}
            for k in kernels:
                one_step(k, xs, weight_copies(k, weights, rows))  # warm-up (oneDNN creates its kernels)
                start = time.perf_counter()
                copies[k] = weight_copies(k, weights, rows)
                copy_ms[k] = (time.perf_counter() - start) * 1e3
            times: dict[str, list[float]] = {k: [] for k in kernels}
            for r in range(args.rounds):
                order = kernels if r % 2 == 0 else kernels[::-1]
                for k in order:
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        one_step(k, xs, copies[k])
                    times[k].append((time.perf_counter() - start) / args.steps * 1e3)
            step = {k: statistics.median(v) for k, v in times.items()}
            row: dict = {"rows": rows, "ms_per_step": step, "copy_ms": copy_ms}
            cells = [f"{step[k]:.3f}" for k in kernels]
            for k in kernels[1:]:
                saved = step["plain"] - step[k]
                pay = f"{copy_ms[k] / saved:.0f}" if saved > 0 else "never"
                row[f"{k}_vs_plain"] = step["plain"] / step[k]
                cells += [f"{step['plain'] / step[k]:.2f}x", f"{copy_ms[k]:.1f} ({pay})"]
            results.append(row)
            print(f"| {rows} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
