"""What each ablation costs: tokens/s and MFU of one training step for every value of every axis.

One axis changes at a time from the base (the tiny preset in HF Olmo's architecture: MHA, SDPA, RoPE,
non-affine LayerNorm, SwiGLU, fused-QKV sequential block, no biases, untied head). Every variant is a case in
its own process, timed interleaved with the base, so "× base" is the price of the ablation on this machine.
FLOPs per token (olmo.nn.flops) change with some axes (GQA/MQA narrow the K/V projections; GELU/ReLU keep the
full MLP width, SwiGLU halves it); MFU divides by each variant's own FLOPs. The init axis (init_fn) changes only
the starting weights, not the step, and is not timed; flash_attn needs a CUDA GPU.

    python benchmarks/bench_axes.py                 # fp32 eager: ~5 min on 2 cores (bf16: ~2.5 min)
    python benchmarks/bench_axes.py --precision bf16
    python benchmarks/bench_axes.py --quick         # smoke test
"""

from __future__ import annotations

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
    report,
    run_cases,
)

GROUP = 6  # variants per interleaved group (plus the base and a peak case)
MAIN_AXES = ("base", "attention", "attention_backend", "positional", "layer_norm_type", "activation_type", "block_type")


def variants(shape) -> list[tuple[str, str, dict]]:
    """(axis, value, ModelConfig overrides); the first is the base."""
    h = shape.n_heads
    return [
        ("base", "mha, sdpa, rope, default norm, swiglu, sequential", {}),
        ("attention", f"gqa (n_kv_heads={h // 2})", {"n_kv_heads": h // 2}),
        ("attention", "mqa (n_kv_heads=1)", {"n_kv_heads": 1}),
        ("attention_backend", "eager", {"attention_backend": "eager"}),
        ("positional", "alibi", {"positional": "alibi"}),
        ("positional", "learned", {"positional": "learned"}),
        ("positional", "none", {"positional": "none"}),
        ("layer_norm_type", "rms", {"layer_norm_type": "rms"}),
        ("layer_norm_type", "low_precision", {"layer_norm_type": "low_precision"}),
        ("layer_norm_with_affine", "True", {"layer_norm_with_affine": True}),
        ("activation_type", "gelu", {"activation_type": "gelu"}),
        ("activation_type", "relu", {"activation_type": "relu"}),
        ("block_type", "llama", {"block_type": "llama"}),
        ("block_type", "parallel", {"block_type": "parallel"}),
        ("attention_layer_norm", "True (QK-norm)", {"attention_layer_norm": True}),
        ("clip_qkv", "8.0", {"clip_qkv": 8.0}),
        ("norm_after", "True (OLMo-2 order)", {"norm_after": True}),
        ("include_bias", "True", {"include_bias": True}),
        ("weight_tying", "True", {"weight_tying": True}),
    ]


def add_args(parser) -> None:
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--compile", action="store_true", help="compile each block (a cold compile per variant)")
    parser.add_argument("--axes", default=None, help="comma list of axes to time (default: all)")


def main() -> None:
    args = parse_args(__doc__.split("\n")[0], add_args, default_repeats=(5, 3))
    started = time.perf_counter()
    shape = QUICK if args.quick else TINY
    chosen = variants(shape)
    if args.quick:  # one variant of each main axis
        seen: set[str] = set()
        chosen = [v for v in chosen if v[0] in MAIN_AXES and not (v[0] in seen or seen.add(v[0]))]
    if args.axes:
        keep = set(args.axes.split(","))
        chosen = [v for v in chosen if v[0] == "base" or v[0] in keep]
    compiled = args.compile and not args.quick
    mode = f"{args.precision}-{'compile' if compiled else 'eager'}"

    def case(axis: str, value: str, overrides: dict) -> Case:
        cfg = our_config(shape, **overrides)
        return Case(f"{axis}={value}", config=cfg, shape=shape, precision=args.precision, compile=compiled,
                    warmup=2 if compiled else 1, flops=flops_per_step(cfg, shape), threads=args.threads)

    # Groups of at most GROUP variants (a live worker holds ~1 GiB), each with the base and a peak case.
    base_variant, others = chosen[0], chosen[1:]
    peak_size = 256 if args.quick else 1024
    rows, results = [], {"mode": mode, "peak_flops_per_second": [], "variants": {}}
    for g in range(0, max(1, len(others)), GROUP):
        members = [base_variant, *others[g : g + GROUP]]
        peak_group = peak_cases(args.precision, peak_size, threads=args.threads)
        group = [*peak_group, *[case(*v) for v in members]]
        log(f"group {g // GROUP + 1}: {len(group)} cases ({mode}), {args.repeats} rounds")
        timings = run_cases(group, args.repeats)
        peak = best_peak(timings, peak_group).flops_per_second
        results["peak_flops_per_second"].append(peak)
        base = timings[group[len(peak_group)].name]
        for (axis, value, _), c in zip(members, group[len(peak_group):], strict=True):
            if axis == "base" and g > 0:
                continue  # the base row comes from the first group
            t = timings[c.name]
            r = {"axis": axis, "value": value, "step_seconds": t.median, "spread": t.spread,
                 "tokens_per_second": t.tokens_per_second, "mfu": t.flops_per_second / peak,
                 "vs_base_tokens_per_second": base.median / t.median,
                 "flops_per_token": c.flops / shape.tokens, "vs_base_flops_per_token": c.flops / base.case.flops}
            results["variants"][c.name] = r
            rows.append([axis, value, f"{t.median * 1000:.0f} ±{t.spread * 100:.0f}%", t.tokens_per_second,
                         r["vs_base_tokens_per_second"], r["vs_base_flops_per_token"], r["mfu"]])
    peaks = results["peak_flops_per_second"]
    body = (
        f"Shape: {shape.label()}; {mode}; peak {min(peaks) / 1e9:.1f}-{max(peaks) / 1e9:.1f} GFLOP/s "
        f"({args.precision}, timed in each group). Variants run in groups of {GROUP} with the base; "
        "\"× base\" is against the base timed in the same group.\n\n"
        + markdown_table(["axis", "value", "step ms (median ±IQR/2)", "tokens/s", "× base tokens/s",
                          "× base FLOPs/token", "MFU"], rows)
        + "\n\nNot timed: init_fn (only the starting weights differ), attention_backend=flash_attn (CUDA only)."
    )
    report(args, f"bench_axes: the cost of each ablation ({mode})", body, results, started)


if __name__ == "__main__":
    main()
