"""The trainer's throughput and overhead: olmo.train.Trainer against a bare training loop on the same model.

Trainer cases run ``run_experiment`` (and, with tracking, ``olmo.tracking.run_tracked`` with its MLflow
callback on a throw-away sqlite store) on Shakespeare at the tiny preset, with the built-in callbacks
(SpeedMonitor, NonFiniteGuard, and the Checkpointer that run_tracked's save folder brings), and time every
whole loop iteration: batch fetch, LR schedule, forward, loss, backward, grad clipping, AdamW, metrics and
every callback. The bare loop takes the same step on the same model config without the trainer: the trainer's
loss, grad clipping (train.grad_clip = 1.0) and AdamW, on a batch already in memory. Overhead = trainer / bare
- 1, for fp32 and bf16, eager and compiled (train.compile: each block compiled).

    python benchmarks/bench_overhead.py          # ~6 min on 2 cores
    python benchmarks/bench_overhead.py --quick  # smoke test: tiny shapes, eager only
"""

from __future__ import annotations

import importlib.util
import time

from common import (
    QUICK,
    TINY,
    Case,
    flops_per_step,
    log,
    markdown_table,
    matmul_case,
    our_config,
    parse_args,
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
    precisions = sorted({m.split("-")[0] for m in modes})
    cases = [matmul_case(f"peak {p} {n}", p, n) for p in precisions for n in ((256,) if args.quick else (1024, 2048))]
    for mode in modes:
        precision, how = mode.split("-")
        compiled = how == "compile"
        experiment = trainer_experiment(shape, model_axes, precision, compiled, args.cache_dir)
        model_cfg = prepared_model_config(experiment)  # the data decides vocab and EOS, as in the trainer
        flops = flops_per_step(model_cfg, shape)
        warmup = 3 if compiled else 2
        cases.append(Case(f"bare {mode}", model="ours", config=model_cfg, shape=shape, precision=precision,
                          compile=compiled, clip=1.0, warmup=warmup, flops=flops))
        cases.append(Case(f"trainer {mode}", kind="trainer", experiment=experiment, shape=shape,
                          precision=precision, compile=compiled, warmup=warmup, flops=flops))
        if tracking and mode == "fp32-eager":
            cases.append(Case(f"trainer+tracking {mode}", kind="trainer", experiment=experiment, shape=shape,
                              precision=precision, tracking=True, warmup=warmup, flops=flops))
    for c in cases:
        c.threads = args.threads
    log(f"{len(cases)} cases, {args.repeats} rounds")
    timings = run_cases(cases, args.repeats)
    peak = {p: max(t.flops_per_second for n, t in timings.items() if n.startswith(f"peak {p}")) for p in precisions}

    rows, results = [], {"peak_flops_per_second": peak, "cases": {}, "overhead": {}}
    for name, t in timings.items():
        if t.case.kind == "matmul":
            continue
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
        f"Shape: {shape.label()}; Shakespeare, BPE vocabulary {shape.vocab_size}. Peak (max over sizes of the "
        f"median): {', '.join(f'{p} {v / 1e9:.1f}' for p, v in peak.items())} GFLOP/s; MFU against the case's "
        "dtype peak.\n\n"
        + markdown_table(["case", "iteration ms (median ±IQR/2)", "tokens/s", "MFU", "overhead vs bare",
                          "callbacks"], rows)
        + "\n\n" + "\n".join(lines)
    )
    results["worst_overhead"] = worst
    report(args, "bench_overhead: trainer (and tracking) against a bare loop", body, results, started)


if __name__ == "__main__":
    main()
