"""The trainer's throughput and overhead: olmo.train.Trainer against a bare training loop on the same model.

Trainer cases run ``run_experiment`` (and, with tracking, ``olmo.tracking.run_tracked`` with its MLflow
callback on a throw-away sqlite store) on Shakespeare at the tiny preset, with the built-in callbacks
(SpeedMonitor, NonFiniteGuard, and the Checkpointer that run_tracked's save folder brings), and time every
whole loop iteration: batch fetch, LR schedule, forward, loss, backward, grad clipping, AdamW, metrics and
every callback. The bare loop takes the same step on the same model config without the trainer: the trainer's
loss, grad clipping (train.grad_clip = 1.0) and AdamW, on a batch already in memory. Overhead = trainer / bare
- 1, for fp32 and bf16, eager and compiled (train.compile: each block compiled).

    python benchmarks/bench_overhead.py          # ~2 min idle, 7-9 min with other jobs on the 2 cores
    python benchmarks/bench_overhead.py --quick  # smoke test: tiny shapes, eager only
"""

from __future__ import annotations

import importlib.util
import time

from common import (
    QUICK,
    TINY,
    Case,
    best_peak,
    flops_per_step,
    log,
    markdown_table,
    our_config,
    parse_args,
    peak_cases,
    prepared_model_config,
    report,
    run_cases,
    trainer_experiment,
)

MODES = ("fp32-eager", "fp32-compile", "bf16-eager", "bf16-compile")
TARGET_OVERHEAD = 0.03


def add_args(parser) -> None:
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of: " + ", ".join(MODES))
    parser.add_argument("--cache-dir", default=None, help="data cache (default: $OLMO_SWEEPS_CACHE or ~/.cache)")
    parser.add_argument("--no-tracking", action="store_true", help="skip the trainer+MLflow case")


def main() -> None:
    args = parse_args(__doc__.split("\n")[0], add_args, default_repeats=(7, 3))
    started = time.perf_counter()
    shape = QUICK if args.quick else TINY
    modes = [m for m in args.modes.split(",") if m and not (args.quick and m != "fp32-eager")]
    tracking_available = importlib.util.find_spec("olmo.tracking") is not None
    tracking = tracking_available and not args.no_tracking

    model_axes = {k: v for k, v in our_config(shape).items() if k not in ("eos_token_id", "pad_token_id")}
    precisions = [p for p in ("fp32", "bf16") if any(m.startswith(p) for m in modes)]
    timings, peak = {}, {}
    for precision in precisions:  # one interleaved group per dtype (a live worker holds ~1 GiB)
        peak_group = peak_cases(precision, 256 if args.quick else 1024)
        group = list(peak_group)
        for mode in [m for m in modes if m.startswith(precision)]:
            compiled = mode.endswith("compile")
            experiment = trainer_experiment(shape, model_axes, precision, compiled, args.cache_dir)
            model_cfg = prepared_model_config(experiment)  # the data decides vocab and EOS, as in the trainer
            flops = flops_per_step(model_cfg, shape)
            warmup = 3 if compiled else 2
            group.append(Case(f"bare {mode}", model="ours", config=model_cfg, shape=shape, precision=precision,
                              compile=compiled, clip=1.0, warmup=warmup, flops=flops))
            group.append(Case(f"trainer {mode}", kind="trainer", experiment=experiment, shape=shape,
                              precision=precision, compile=compiled, warmup=warmup, flops=flops))
            if tracking and mode == "fp32-eager":
                group.append(Case(f"trainer+tracking {mode}", kind="trainer", experiment=experiment, shape=shape,
                                  precision=precision, tracking=True, warmup=warmup, flops=flops))
        for c in group:
            c.threads = args.threads
        log(f"{precision}: {len(group)} cases, {args.repeats} rounds")
        group_timings = run_cases(group, args.repeats)
        peak[precision] = best_peak(group_timings, peak_group).flops_per_second
        for c in peak_group:
            group_timings.pop(c.name)
        timings.update(group_timings)

    rows, results = [], {"peak_flops_per_second": peak, "cases": {}, "overhead": {}}
    for name, t in timings.items():
        mode = name.split()[-1]
        bare = timings[f"bare {mode}"]
        overhead = t.median / bare.median - 1
        results["cases"][name] = {
            "step_seconds": t.median, "spread": t.spread, "tokens_per_second": t.tokens_per_second,
            "mfu": t.flops_per_second / peak[t.case.precision], "overhead_vs_bare": overhead,
            "callbacks": t.info.get("callbacks"),
        }
        if t.case.kind == "trainer":
            results["overhead"][name] = overhead
        rows.append([name, f"{t.median * 1000:.1f} ±{t.spread * 100:.0f}%", t.tokens_per_second,
                     t.flops_per_second / peak[t.case.precision],
                     "—" if t.case.kind == "step" else f"{overhead * 100:+.1f}%",
                     ", ".join(t.info.get("callbacks") or [])])
    worst = max(results["overhead"].values()) if results["overhead"] else float("nan")
    lines = [f"- worst trainer overhead: {worst * 100:+.1f}% (target ≤ {TARGET_OVERHEAD * 100:.0f}%) — "
             f"{'met' if worst <= TARGET_OVERHEAD else 'MISSED'}"]
    if not tracking_available:
        lines.append("- tracking: olmo.tracking is not there yet; the trainer ran with its built-in callbacks only")
    elif not tracking:
        lines.append("- tracking: skipped (--no-tracking)")
    body = (
        f"Shape: {shape.label()}; Shakespeare, BPE vocabulary {shape.vocab_size}. One interleaved group per "
        f"dtype; peak (same group): {', '.join(f'{p} {v / 1e9:.1f}' for p, v in peak.items())} GFLOP/s, MFU "
        "against the case's dtype peak. The Gate callback is the benchmark's: it times each iteration.\n\n"
        + markdown_table(["case", "iteration ms (median ±IQR/2)", "tokens/s", "MFU", "overhead vs bare",
                          "callbacks"], rows)
        + "\n\n" + "\n".join(lines)
    )
    results["worst_overhead"] = worst
    report(args, "bench_overhead: trainer (and tracking) against a bare loop", body, results, started)


if __name__ == "__main__":
    main()
