"""Training throughput of our model against Hugging Face's OlmoForCausalLM and LlamaForCausalLM.

One full step (forward, the trainer's loss, backward, the trainer's AdamW) on identical shapes with random
weights, every case in its own process, timed interleaved: fp32 and bf16 autocast, eager and compiled (each
block / decoder layer), at the tiny preset and at d_model 512. FLOPs are counted with the platform's formula
(olmo.nn.flops) for every model; MFU is against the matmul peak measured in the same run with the same clock.

Our model is configured as HF's architecture: RoPE, SwiGLU, no biases, non-affine LayerNorm (HF Olmo) or affine
RMSNorm with separate q/k/v projections (HF Llama), no dropout, untied head (HF's default). Our "ours" case
keeps our fused QKV projection (block_type=sequential), "ours_llama" uses block_type=llama.

    python benchmarks/bench_train.py            # both shapes, ~10 min on 2 cores
    python benchmarks/bench_train.py --shapes tiny --models ours,hf_olmo
    python benchmarks/bench_train.py --quick    # smoke test: tiny shapes, eager only, seconds
"""

from __future__ import annotations

import time

from common import (
    D512,
    QUICK,
    TINY,
    Case,
    flops_per_step,
    fmt,
    llama_twin,
    log,
    markdown_table,
    matmul_case,
    our_config,
    parse_args,
    report,
    run_cases,
)

SHAPES = {"tiny": TINY, "d512": D512}
MODELS = ("ours", "hf_olmo", "ours_llama", "hf_llama")
MODES = ("fp32-eager", "fp32-compile", "bf16-eager", "bf16-compile")
BASELINE = "hf_olmo fp32-eager"
TARGETS = {  # (what, threshold)
    "fp32_eager_vs_hf": 1.15,
    "mfu_fp32_tiny": 0.75,
    "mfu_fp32_d512": 0.80,
    "best_vs_hf_fp32_eager": 1.8,
}


def add_args(parser) -> None:
    parser.add_argument("--shapes", default="tiny,d512", help="comma list of: tiny, d512")
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of: " + ", ".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of: " + ", ".join(MODES))
    parser.add_argument("--no-malloc-reference", action="store_true",
                        help="skip the fp32-eager cases under glibc's default allocator settings")


def cases_for(shape_name: str, shape, models, modes, quick: bool, malloc_reference: bool) -> list[Case]:
    base = our_config(shape)
    configs = {"ours": ("ours", base), "hf_olmo": ("hf_olmo", base), "ours_llama": ("ours", llama_twin(base)),
               "hf_llama": ("hf_llama", llama_twin(base))}
    cases = [matmul_case(f"peak {p} {n}", p, n) for p in ("fp32", "bf16") for n in ((256,) if quick else (1024, 2048))]
    for mode in modes:
        precision, how = mode.split("-")
        for m in models:
            if quick and mode != "fp32-eager" and m not in ("ours", "hf_olmo"):
                continue  # --quick: every model once, bf16 for two of them
            kind, cfg = configs[m]
            cases.append(Case(f"{m} {mode}", model=kind, config=cfg, shape=shape, precision=precision,
                              compile=how == "compile", warmup=2 if how == "compile" else 1,
                              flops=flops_per_step(cfg, shape)))
    if BASELINE not in [c.name for c in cases]:
        cases.append(Case(BASELINE, model="hf_olmo", config=base, shape=shape, flops=flops_per_step(base, shape)))
    if malloc_reference and not quick:
        for m in ("ours", "hf_olmo"):
            kind, cfg = configs[m]
            cases.append(Case(f"{m} fp32-eager default-malloc", model=kind, config=cfg, shape=shape, malloc="default",
                              flops=flops_per_step(cfg, shape)))
    return cases


def main() -> None:
    args = parse_args(__doc__.split("\n")[0], add_args, default_repeats=(7, 3))
    started = time.perf_counter()
    models = [m for m in args.models.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    if args.quick:
        shapes = {"quick": QUICK}
        modes = [m for m in modes if m.endswith("eager")]  # a cold compile alone costs 20-30 s
    else:
        shapes = {s: SHAPES[s] for s in args.shapes.split(",") if s}
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"--models: unknown {m!r}; allowed: {', '.join(MODELS)}")
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"--modes: unknown {m!r}; allowed: {', '.join(MODES)}")

    results: dict = {"shapes": {}, "targets": {}}
    sections = []
    for shape_name, shape in shapes.items():
        cases = cases_for(shape_name, shape, models, modes, args.quick, not args.no_malloc_reference)
        for c in cases:
            c.threads = args.threads
        log(f"{shape_name}: {len(cases)} cases, {args.repeats} rounds")
        timings = run_cases(cases, args.repeats)
        peak = {p: max(t.flops_per_second for n, t in timings.items() if n.startswith(f"peak {p}"))
                for p in ("fp32", "bf16")}
        base = timings[BASELINE].median
        rows, shape_results = [], {"peak_flops_per_second": peak, "cases": {}}
        for name, t in timings.items():
            if t.case.kind != "step":
                continue
            precision = t.case.precision
            same_mode = timings.get(f"hf_olmo {name.split()[1]}") if len(name.split()) == 2 else None
            r = {
                "step_seconds": t.median, "spread": t.spread, "tokens_per_second": t.tokens_per_second,
                "mfu": t.flops_per_second / peak[precision], "mfu_vs_fp32_peak": t.flops_per_second / peak["fp32"],
                "vs_hf_olmo_same_mode": same_mode.median / t.median if same_mode else float("nan"),
                "vs_hf_olmo_fp32_eager": base / t.median, "warmup_seconds": t.warmup_seconds,
            }
            shape_results["cases"][name] = r
            rows.append([name, f"{r['step_seconds'] * 1000:.0f} ±{r['spread'] * 100:.0f}%", r["tokens_per_second"],
                         r["mfu"], r["vs_hf_olmo_same_mode"], r["vs_hf_olmo_fp32_eager"], f"{t.warmup_seconds:.0f}"])
        results["shapes"][shape_name] = shape_results
        peak_rows = [[n, f"{t.flops_per_second / 1e9:.1f}", f"±{t.spread * 100:.0f}%"]
                     for n, t in timings.items() if t.case.kind == "matmul"]
        sections.append(
            f"### {shape_name}: {shape.label()}\n\n"
            f"FLOPs per step (olmo.nn.flops, the same for every model): "
            f"{fmt(float(flops_per_step(our_config(shape), shape)))}. Peak (max over sizes of the median): fp32 "
            f"{peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s.\n\n"
            + markdown_table(["case", "step ms (median ±IQR/2)", "tokens/s", "MFU (own dtype's peak)",
                              "× HF Olmo same mode", "× HF Olmo fp32 eager", "warm-up s"], rows)
            + "\n\n" + markdown_table(["peak case", "GFLOP/s", "spread"], peak_rows)
        )
        cs = shape_results["cases"]
        if shape_name in ("tiny", "d512"):
            if "ours fp32-eager" in cs:
                results["targets"][f"mfu_fp32_{shape_name}"] = cs["ours fp32-eager"]["mfu"]
        if shape_name == "tiny" and "ours fp32-eager" in cs:
            results["targets"]["fp32_eager_vs_hf"] = cs["ours fp32-eager"]["vs_hf_olmo_fp32_eager"]
            best = max((cs[n]["vs_hf_olmo_fp32_eager"], n) for n in cs if n.startswith("ours ") and "default" not in n)
            results["targets"]["best_vs_hf_fp32_eager"] = best[0]
            results["targets"]["best_case"] = best[1]
    target_lines = []
    for key, threshold in TARGETS.items():
        if key in results["targets"]:
            value = results["targets"][key]
            verdict = "met" if value >= threshold else "MISSED"
            which = f" ({results['targets']['best_case']})" if key.startswith("best") else ""
            target_lines.append(f"- {key}: {value:.3g}{which} (target ≥ {threshold}) — {verdict}")
    body = "\n\n".join(sections) + ("\n\nTargets:\n" + "\n".join(target_lines) if target_lines else "")
    report(args, "bench_train: ours vs HF Olmo/Llama, one full training step", body, results, started)


if __name__ == "__main__":
    main()
