"""The machine's matmul peak: FLOP/s of square fp32 and bf16 matmuls, the denominator of MFU.

Each dtype is timed with every kernel our linear layers may use (olmo.nn.linear.matmul_kernels): ``aten``
(torch.mm: MKL's sgemm in fp32, oneDNN in bf16) and, in fp32 on CPU, ``onednn`` (oneDNN's fp32 product); the
peak is the best of them.

Every (dtype, threads, size) is a case in its own process, timed interleaved; the peak of a (dtype, threads)
is the best median over sizes (small matrices do not reach it, very large ones fall out of cache). One-thread
cases are timed in process CPU seconds, multi-thread cases in wall seconds (a busy neighbour makes those
noisy). The trainer's own estimate (olmo.train.peak.measure_peak_flops, what SpeedMonitor divides by when
train.peak_flops_per_second is unset) is shown for comparison.

    python benchmarks/bench_peak.py             # ~1 min idle; much longer when the 2 cores are shared
    python benchmarks/bench_peak.py --quick     # smoke test
"""

from __future__ import annotations

import time

from common import fmt, log, markdown_table, matmul_case, parse_args, peak_kernels, report, run_cases

PRECISIONS = ("fp32", "bf16")


def add_args(parser) -> None:
    parser.add_argument("--thread-counts", default="1,2", help="comma list of torch thread counts (default 1,2)")
    parser.add_argument("--sizes", default="512,1024,2048", help="comma list of square matrix sizes")


def trainer_estimate(precision: str, threads: int) -> float:
    """What the trainer measures by default (wall clock, size 1024, 5 repeats), at ``threads`` threads."""
    import torch

    from olmo.train.peak import measure_peak_flops

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        return measure_peak_flops.__wrapped__(dtype, "cpu")  # bypass its per-process cache
    finally:
        torch.set_num_threads(before)


def main() -> None:
    args = parse_args(__doc__.split("\n")[0], add_args, default_repeats=(5, 3))
    started = time.perf_counter()
    thread_counts = [1] if args.quick else [int(t) for t in args.thread_counts.split(",")]
    sizes = [256, 512] if args.quick else [int(s) for s in args.sizes.split(",")]
    cases = [
        matmul_case(f"{p} {t}t {n} {k}", p, n, threads=t, seconds=0.1 if args.quick else 0.3, kernel=k)
        for t in thread_counts for p in PRECISIONS for k in peak_kernels(p) for n in sizes
    ]
    log(f"{len(cases)} cases, {args.repeats} rounds")
    timings = run_cases(cases, args.repeats)

    rows, peaks = [], {}
    for t in timings.values():
        p, threads, size = t.case.precision, t.case.threads, t.case.size
        rows.append([p, t.case.kernel, threads, size, t.case.clock, f"{t.flops_per_second / 1e9:.1f}",
                     f"±{t.spread * 100:.0f}%"])
        key = f"{p} {threads}t"
        if key not in peaks or t.flops_per_second > peaks[key]["flops_per_second"]:
            peaks[key] = {"precision": p, "threads": threads, "size": size, "kernel": t.case.kernel,
                          "flops_per_second": t.flops_per_second,
                          "clock": t.case.clock}
    for peak in peaks.values():
        peak["trainer_estimate"] = trainer_estimate(peak["precision"], peak["threads"])
    summary = [
        [k, f"{v['flops_per_second'] / 1e9:.1f}", v["kernel"], v["size"], v["clock"],
         f"{v['trainer_estimate'] / 1e9:.1f}", v["trainer_estimate"] / v["flops_per_second"]]
        for k, v in peaks.items()
    ]
    ratio_lines = []
    for t in thread_counts:
        if f"fp32 {t}t" in peaks and f"bf16 {t}t" in peaks:
            r = peaks[f"bf16 {t}t"]["flops_per_second"] / peaks[f"fp32 {t}t"]["flops_per_second"]
            ratio_lines.append(f"- bf16 / fp32 peak at {t} thread(s): {fmt(r)}")
    if len(thread_counts) > 1 and "fp32 1t" in peaks:
        for t in thread_counts[1:]:
            if f"fp32 {t}t" in peaks:
                r = peaks[f"fp32 {t}t"]["flops_per_second"] / peaks["fp32 1t"]["flops_per_second"]
                ratio_lines.append(f"- fp32 peak, {t} threads (wall) / 1 thread (CPU time): {fmt(r)}")
    body = (
        "Peak per dtype and thread count (best median over sizes), and the trainer's default estimate "
        "(olmo.train.peak.measure_peak_flops: size 1024, wall clock, measured after this run, not interleaved):\n\n"
        + markdown_table(["dtype, threads", "peak GFLOP/s", "kernel", "at size", "clock", "trainer estimate GFLOP/s",
                          "estimate / peak"], summary)
        + "\n\n" + "\n".join(ratio_lines)
        + "\n\nEvery case (median of the interleaved rounds, ±half the interquartile range):\n\n"
        + markdown_table(["dtype", "kernel", "threads", "size", "clock", "GFLOP/s", "spread"], rows)
    )
    results = {"peaks": peaks, "cases": {n: {"flops_per_second": t.flops_per_second, "spread": t.spread}
                                         for n, t in timings.items()}}
    report(args, "bench_peak: matmul FLOP/s (the MFU denominator)", body, results, started)


if __name__ == "__main__":
    main()
