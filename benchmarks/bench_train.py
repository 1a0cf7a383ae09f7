"""Training throughput of our model against Hugging Face's OlmoForCausalLM and LlamaForCausalLM.

One full step (forward, the trainer's loss, backward, the trainer's AdamW) on identical shapes with random
weights, every case in its own process, timed interleaved: fp32 and bf16 autocast, eager and compiled (each
block / decoder layer), at the tiny preset and at d_model 512. FLOPs are counted with the platform's formula
(olmo.nn.flops) for every model; MFU is against the matmul peak measured in the same run with the same clock.

Our model is configured as HF's architecture: RoPE, SwiGLU, no biases, non-affine LayerNorm (HF Olmo) or affine
RMSNorm with separate q/k/v projections (HF Llama), no dropout, untied head (HF's default). Our "ours" case
keeps our fused QKV projection (block_type=sequential), "ours_llama" uses block_type=llama; "ours bf16-compile
attention=eager" swaps SDPA for our eager attention kernel, faster in bf16 on CPU (see docs/benchmarks.md).

    python benchmarks/bench_train.py            # tiny: 4 models; d512: ours and HF Olmo (~8 min idle, 2 cores)
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
    best_peak,
    flops_per_step,
    fmt,
    llama_twin,
    log,
    markdown_table,
    our_config,
    parse_args,
    peak_cases,
    report,
    run_cases,
)

SHAPES = {"tiny": TINY, "d512": D512}
MODELS = ("ours", "hf_olmo", "ours_llama", "hf_llama")
MODES = ("fp32-eager", "fp32-compile", "bf16-eager", "bf16-compile")
BASELINE = "hf_olmo fp32-eager"
EAGER_ATTENTION = "attention=eager"
TARGETS = {  # (what, threshold)
    "fp32_eager_vs_hf": 1.15,
    "mfu_fp32_tiny": 0.75,
    "mfu_fp32_d512": 0.80,
    "best_vs_hf_fp32_eager": 1.8,
}


def add_args(parser) -> None:
    parser.add_argument("--shapes", default="tiny,d512", help="comma list of: tiny, d512")
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of: " + ", ".join(MODELS))
    parser.add_argument("--d512-models", default="ours,hf_olmo", help="models at d512 (default: ours,hf_olmo)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of: " + ", ".join(MODES))
    parser.add_argument("--no-malloc-reference", action="store_true",
                        help="skip the fp32-eager cases under glibc's default allocator settings")


def groups_for(shape_name: str, shape, models, modes, quick: bool, malloc_reference: bool) -> list[list[Case]]:
    """One group of cases per mode (at most ~7 live workers, ~1 GiB each): the models in that mode, the
    baseline (HF Olmo fp32 eager) and a peak case of the mode's dtype, so every ratio and MFU is in-group."""
    base = our_config(shape)
    configs = {"ours": ("ours", base), "hf_olmo": ("hf_olmo", base), "ours_llama": ("ours", llama_twin(base)),
               "hf_llama": ("hf_llama", llama_twin(base))}
    groups = []
    for mode in modes:
        precision, how = mode.split("-")
        group = peak_cases(precision, 256 if quick else 1024)
        for m in models:
            if quick and mode != "fp32-eager" and m not in ("ours", "hf_olmo"):
                continue  # --quick: every model once, bf16 for two of them
            kind, cfg = configs[m]
            group.append(Case(f"{m} {mode}", model=kind, config=cfg, shape=shape, precision=precision,
                              compile=how == "compile", warmup=2 if how == "compile" else 1,
                              flops=flops_per_step(cfg, shape)))
        if mode == "bf16-compile" and "ours" in models:  # on CPU, our eager attention beats SDPA's kernel in bf16
            cfg = {**base, "attention_backend": "eager"}
            group.append(Case(f"ours bf16-compile {EAGER_ATTENTION}", config=cfg, shape=shape, precision="bf16",
                              compile=True, warmup=2, flops=flops_per_step(cfg, shape)))
        if BASELINE not in [c.name for c in group]:
            group.append(Case(BASELINE, model="hf_olmo", config=base, shape=shape, flops=flops_per_step(base, shape)))
        if mode == "fp32-eager" and malloc_reference and not quick and shape_name == "tiny":
            for m in ("ours", "hf_olmo"):
                kind, cfg = configs[m]
                group.append(Case(f"{m} fp32-eager default-malloc", model=kind, config=cfg, shape=shape,
                                  malloc="default", flops=flops_per_step(cfg, shape)))
        groups.append(group)
    return groups


def main() -> None:
    args = parse_args(__doc__.split("\n")[0], add_args, default_repeats=(5, 3))
    started = time.perf_counter()
    models = [m for m in args.models.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    if args.quick:
        shapes = {"quick": QUICK}
        modes = [m for m in modes if m.endswith("eager")]  # a cold compile alone costs 20-30 s
    else:
        shapes = {s: SHAPES[s] for s in args.shapes.split(",") if s}
    for m in models + args.d512_models.split(","):
        if m not in MODELS:
            raise SystemExit(f"--models: unknown {m!r}; allowed: {', '.join(MODELS)}")
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"--modes: unknown {m!r}; allowed: {', '.join(MODES)}")

    results: dict = {"shapes": {}, "targets": {}}
    sections = []
    for shape_name, shape in shapes.items():
        shape_models = [m for m in args.d512_models.split(",") if m] if shape_name == "d512" else models
        rows, peak_rows, shape_results = [], [], {"peak_flops_per_second": {}, "cases": {}}
        for mode, group in zip(modes, groups_for(shape_name, shape, shape_models, modes, args.quick,
                                                 not args.no_malloc_reference), strict=True):
            for c in group:
                c.threads = args.threads
            log(f"{shape_name} {mode}: {len(group)} cases, {args.repeats} rounds")
            timings = run_cases(group, args.repeats)
            peak_case = best_peak(timings, group)
            peak, baseline = peak_case.flops_per_second, timings[BASELINE]
            shape_results["peak_flops_per_second"][mode] = peak
            peak_rows.append([mode, peak_case.case.name, f"{peak / 1e9:.1f}", f"±{peak_case.spread * 100:.0f}%"])
            for name, t in timings.items():
                if t.case.kind != "step" or (name == BASELINE and mode != "fp32-eager"):
                    continue  # the baseline is shown in its own mode only
                same_mode = None if "default-malloc" in name else timings.get(f"hf_olmo {mode}")
                r = {
                    "mode": mode, "step_seconds": t.median, "spread": t.spread,
                    "tokens_per_second": t.tokens_per_second, "mfu": t.flops_per_second / peak,
                    "vs_hf_olmo_same_mode": same_mode.median / t.median if same_mode else float("nan"),
                    "vs_hf_olmo_fp32_eager": baseline.median / t.median, "warmup_seconds": t.warmup_seconds,
                }
                shape_results["cases"][name] = r
                rows.append([name, f"{t.median * 1000:.0f} ±{t.spread * 100:.0f}%", r["tokens_per_second"], r["mfu"],
                             r["vs_hf_olmo_same_mode"], r["vs_hf_olmo_fp32_eager"], f"{t.warmup_seconds:.0f}"])
        results["shapes"][shape_name] = shape_results
        sections.append(
            f"### {shape_name}: {shape.label()}\n\n"
            f"FLOPs per step (olmo.nn.flops, the same for every model): "
            f"{fmt(float(flops_per_step(our_config(shape), shape)))}. One interleaved group per mode; ratios and MFU "
            "are against the HF Olmo fp32-eager baseline and the peak timed in the same group.\n\n"
            + markdown_table(["case", "step ms (median ±IQR/2)", "tokens/s", "MFU (own dtype's peak)",
                              "× HF Olmo same mode", "× HF Olmo fp32 eager", "warm-up s"], rows)
            + "\n\n" + markdown_table(["group", "peak case", "GFLOP/s", "spread"], peak_rows)
        )
        cs = shape_results["cases"]
        if shape_name in ("tiny", "d512") and "ours fp32-eager" in cs:
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
