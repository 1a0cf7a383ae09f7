"""GPU training throughput: the ~1B preset at sequence 2048 in bf16, FSDP on one GPU, MFU against the card.

The model is OLMo-1B's shape (conf/model/1b.yaml: d_model 2048, 16 layers, 16 heads, SwiGLU width 8192,
RoPE, non-affine LayerNorm, no biases, tied 50304-row embedding), wrapped as the trainer wraps it under
torchrun: FSDP2 (``olmo.distributed.apply_fsdp``, one unit per block, bf16 parameters and fp32 gradient
reduction) in a one-process NCCL group, the trainer's loss and AdamW. One full step is forward, loss,
backward, AdamW and zero_grad on one micro-batch. Cases run one after another in this process (a GPU is not
shared the way the 2-core CPU is), each timed with CUDA events over ``--steps`` steps after a warm-up:

- ``eager``: attention through SDPA, PyTorch's choice of kernel.
- ``eager-flash-only``: the same step inside ``sdpa_kernel(FLASH_ATTENTION)``. It fails if our attention
  call cannot use the flash kernel (an explicit mask, say), so a pass proves the kernel is flash.
- ``compile``: each block compiled (``train.compile=true``).
- ``compile-foreach-adamw``: ``compile`` with AdamW's foreach update instead of the fused CUDA kernel that
  ``olmo.train.optim.build_optimizer`` picks on a GPU (the comparison that justified that default).
- ``trainer``: not a bare step but ``olmo.train.run_experiment`` on the built-in corpus (Shakespeare, its BPE
  trained to the preset's vocabulary size), compiled, as one process trains without torchrun: no FSDP, with the
  data loading, the loss bookkeeping, grad clipping, the schedule and the callbacks of a real run. Its numbers
  are the trainer's own SpeedMonitor metrics (its model's vocabulary is what the BPE reached, so its FLOPs per
  step differ a little from the other cases'; MFU is comparable).
- ``flash_attn`` (when the flash-attn package is installed): ``attention_backend=flash_attn``, compiled.

FLOPs are the platform's count (olmo.nn.flops: 6N + 12·L·H·Q·T per token). MFU is against two peaks: the
bf16 matmul rate measured here (8192³, median of repeats) and the card's dense bf16 datasheet rate where the
card is known (H100/H200 SXM: 989 TFLOP/s). The target (MFU ≥ 0.45) is judged against the datasheet.

    python benchmarks/bench_gpu.py               # CUDA only: ~1 min on an H100/H200 (compile included)
    python benchmarks/bench_gpu.py --quick       # any machine: tiny shapes, CUDA if present, else CPU (gloo)
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, fmt, log, machine, markdown_table, parse_args, report

TARGET_MFU = 0.45
CASES = ("eager", "eager-flash-only", "compile", "compile-foreach-adamw", "trainer", "flash_attn")
# Dense bf16 datasheet rates (no sparsity), FLOP/s, by a substring of torch.cuda.get_device_name().
DATASHEET_BF16 = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "H800": 989.4e12, "A100": 312e12,
                  "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def add_args(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sequences per step (default: 8 on a card of 64+ GiB, else 4; --quick 4)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 10, --quick 3)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma list of: " + ", ".join(CASES))
    parser.add_argument("--cache-dir", default=None,
                        help="the trainer case's data cache (tokenizer, tokens); default: a temporary folder")
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="also profile 2 steps of some cases (torch.profiler) and write their kernel tables here")
    parser.add_argument("--profile-cases", default="compile", help="comma list of the cases to profile")


def model_fields(quick: bool) -> dict[str, Any]:
    if quick:
        shape = dict(d_model=64, n_heads=2, n_layers=2, mlp_ratio=8, max_sequence_length=64, vocab_size=512)
    else:
        shape = yaml.safe_load((ROOT / "conf" / "model" / "1b.yaml").read_text())
        shape.update(vocab_size=50280, embedding_size=50304)  # OLMo-1B's GPT-NeoX vocabulary, padded
    return {**shape, "positional": "rope", "activation_type": "swiglu", "block_type": "sequential",
            "layer_norm_type": "default", "layer_norm_with_affine": False, "include_bias": False,
            "weight_tying": True, "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0,
            "eos_token_id": 0, "pad_token_id": 1, "attention_backend": "sdpa"}


def datasheet_peak(device) -> tuple[float | None, str]:
    import torch

    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    for key, rate in DATASHEET_BF16.items():  # "H100 PCIe" before "H100"
        if key in name:
            return rate, name
    return None, name


def measured_peak(device, size: int, repeats: int = 10) -> float:
    """Median bf16 FLOP/s of a size³ matmul (events on CUDA, wall clock on CPU)."""
    import torch

    a = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    b = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    return 2 * size**3 / statistics.median(time_calls(lambda: torch.mm(a, b), device, 3, repeats))


def time_calls(fn, device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


@contextlib.contextmanager
def one_process_group(device):
    """A world of one (NCCL on CUDA, gloo on CPU): FSDP2 needs a process group even on one device."""
    import torch.distributed as dist

    with tempfile.TemporaryDirectory(prefix="olmo-bench-pg-") as tmp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{tmp}/store",
                                rank=0, world_size=1, device_id=device if device.type == "cuda" else None)
        try:
            yield
        finally:
            dist.destroy_process_group()


def fsdp_step(fields: dict[str, Any], case: str, batch_size: int, device):
    """A built, FSDP-wrapped (and maybe compiled) model and one training step of it, as the trainer runs it."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from olmo.config import ModelConfig
    from olmo.config.train import DistributedConfig, OptimConfig, TrainConfig
    from olmo.distributed import parallelize
    from olmo.distributed.parallelize import apply_fsdp
    from olmo.nn.model import OLMo
    from olmo.train.loss import next_token_loss
    from olmo.train.optim import build_optimizer

    if case == "flash_attn":
        fields = {**fields, "attention_backend": "flash_attn"}
    config = ModelConfig(**fields)
    torch.manual_seed(0)
    model = OLMo(config, device=device)
    compile = case in ("compile", "compile-foreach-adamw", "flash_attn")
    dist_cfg = DistributedConfig(fsdp_wrap="by_block", fsdp_mixed_precision=True)
    parallelize(model, dist_cfg, TrainConfig(max_steps=1, compile=compile, precision="bf16"), world_size=1)
    apply_fsdp(model, dist_cfg, "bf16")  # parallelize wraps only when world_size > 1; here we want FSDP on one
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4), fused=False if case.endswith("foreach-adamw") else None)
    g = torch.Generator(device=device).manual_seed(0)
    seq = config.max_sequence_length
    input_ids = torch.randint(0, config.vocab_size, (batch_size, seq), generator=g, device=device)
    flash_only = case == "eager-flash-only"
    model.train()

    def step() -> None:
        kernel = sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if flash_only else contextlib.nullcontext()
        with kernel, torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(input_ids).logits
        ce, _ = next_token_loss(logits, input_ids)
        (ce / input_ids[:, 1:].numel()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def trainer_run(fields: dict[str, Any], batch_size: int, steps: int, device, peak: float,
                cache_dir: str) -> tuple[list[float], float, dict[str, Any]]:
    """``steps`` + 3 steps of the real trainer: the seconds of the steps after the first 3 (compile, warm-up),
    the trainer's FLOPs per step (its model has the BPE's vocabulary) and its final loss."""
    from olmo.config import ExperimentConfig
    from olmo.train import run_experiment

    data_fields = ("vocab_size", "embedding_size", "eos_token_id", "pad_token_id")  # the data decides these
    model = {k: v for k, v in fields.items() if k not in data_fields}
    cfg = ExperimentConfig.from_dict({
        "model": model,
        "data": {"cache_dir": cache_dir, "tokenizer": {"vocab_size": fields["vocab_size"]}},
        "train": {"global_batch_size": batch_size, "seq_len": fields["max_sequence_length"], "max_steps": steps + 3,
                  "precision": "bf16", "compile": device.type == "cuda", "eval_interval": None, "eval_batches": 1,
                  "peak_flops_per_second": peak, "export_final_model": False},
    })
    history = run_experiment(cfg).history[3:]
    last = history[-1]
    flops = last["train/mfu"] * peak * last["train/step_seconds"]  # SpeedMonitor's MFU, one device
    return [m["train/step_seconds"] for m in history], flops, {"final_loss": last["train/loss"]}


def timed_fsdp_step(fields: dict[str, Any], case: str, batch_size: int, steps: int, device,
                    profile_path: Path | None) -> tuple[list[float], float, dict[str, Any]]:
    """The seconds of ``steps`` steps after 3 warm-up steps, the build and warm-up seconds, the parameter count;
    the model is freed on return."""
    start = time.perf_counter()
    model, step = fsdp_step(fields, case, batch_size, device)
    times = time_calls(step, device, 3, steps)
    warmup_s = time.perf_counter() - start - sum(times)
    if profile_path is not None:
        profile(step, device, profile_path)
    return times, warmup_s, {"params": sum(p.numel() for p in model.parameters())}


def profile(step, device, path: Path) -> None:
    """Two profiled steps: the operators and kernels that take the time, as torch.profiler's table."""
    import torch
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(2):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=80))


def case_row(case: str, r: dict[str, Any], sheet: float | None) -> list[Any]:
    return [case, f"{r['step_seconds'] * 1000:.1f} ({r['min'] * 1000:.1f}-{r['max'] * 1000:.1f})",
            r["tokens_per_second"], f"{r['tflops']:.1f}", r["mfu_measured"],
            "n/a" if sheet is None else f"{r['mfu_datasheet']:.3f}",
            "n/a" if r["max_memory_gib"] is None else f"{r['max_memory_gib']:.1f}", fmt(r["warmup_seconds"])]


def main() -> None:
    args = parse_args(__doc__.split("\n")[0], add_args, default_repeats=(1, 1))
    started = time.perf_counter()
    import torch

    from olmo.config import ModelConfig
    from olmo.nn.attention import flash_attn_available
    from olmo.nn.flops import flops_per_token

    if torch.cuda.is_available():
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    elif args.quick:
        device = torch.device("cpu")
        torch.set_num_threads(args.threads)
    else:
        raise SystemExit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); --quick runs on CPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    fields = model_fields(args.quick)
    config = ModelConfig(**fields)
    total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else 0
    batch_size = args.batch_size or (4 if args.quick or total_gib < 64 else 8)  # batch 8: at most 57 GiB
    steps = args.steps or (3 if args.quick else 10)
    seq = config.max_sequence_length
    step_flops = batch_size * seq * flops_per_token(config, seq).total
    sheet, card = datasheet_peak(device)
    peak = measured_peak(device, 512 if args.quick else 8192)
    log(f"{card}: measured bf16 peak {peak / 1e12:.1f} TFLOP/s; {step_flops / 1e12:.2f} TFLOP per step")

    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"--cases: unknown {c!r}; allowed: {', '.join(CASES)}")
    if args.quick:
        cases = [c for c in cases if c in ("eager", "trainer") or (device.type == "cuda" and c == "eager-flash-only")]
    results: dict[str, Any] = {"card": card, "peak_measured": peak, "peak_datasheet": sheet,
                               "batch_size": batch_size, "seq_len": seq, "step_flops": step_flops,
                               "params": None, "cases": {}, "skipped": {}}
    if device.type == "cuda":  # the host's CPU line, with the clock this script really uses
        results["machine"] = {**machine(args.threads), "clock": "CUDA events"}
    rows = []
    with one_process_group(device):
        for case in cases:
            if case == "flash_attn" and not flash_attn_available():
                results["skipped"][case] = "the flash-attn package is not installed"
                continue
            if case == "eager-flash-only" and device.type != "cuda":
                results["skipped"][case] = "the flash kernel is CUDA-only"
                continue
            log(f"{case}: building and warming up")
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:  # one failing case (out of memory, a compile error) must not lose the others' numbers
                if case == "trainer":
                    with contextlib.ExitStack() as stack:
                        cache = args.cache_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="olmo-bench-"))
                        times, flops, extra = trainer_run(fields, batch_size, steps, device, peak, cache)
                    warmup_s = float("nan")  # inside the trainer
                else:
                    profile_path = None
                    if args.profile_dir is not None and case in args.profile_cases.split(","):
                        profile_path = args.profile_dir / f"profile-{case}.txt"
                    times, warmup_s, extra = timed_fsdp_step(fields, case, batch_size, steps, device, profile_path)
                    results["params"], flops = extra.pop("params"), step_flops
            except Exception as e:
                log(f"  {case}: FAILED: {type(e).__name__}: {e}")
                results["skipped"][case] = f"failed: {type(e).__name__}: {str(e)[:300]}"
                continue
            med = statistics.median(times)
            r = {"step_seconds": med, "min": min(times), "max": max(times), "tokens_per_second": batch_size * seq / med,
                 "tflops": flops / med / 1e12, "mfu_measured": flops / med / peak,
                 "mfu_datasheet": flops / med / sheet if sheet else None, "warmup_seconds": warmup_s,
                 "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                 **extra}
            results["cases"][case] = r
            rows.append(case_row(case, r, sheet))
            log(f"  {case}: {med * 1000:.1f} ms/step, MFU {r['mfu_measured']:.3f} of measured peak")

    best = max(results["cases"].items(), key=lambda kv: kv[1]["tokens_per_second"], default=None)
    target_line = ""
    if best is not None and not args.quick:
        mfu = best[1]["mfu_datasheet"] if sheet else best[1]["mfu_measured"]
        against = "datasheet" if sheet else "measured"
        results["target"] = {"mfu": mfu, "against": against, "case": best[0], "met": mfu >= TARGET_MFU}
        target_line = (f"\n\nTarget: MFU ≥ {TARGET_MFU} in bf16 at the ~1B preset — best case {best[0]!r}: "
                       f"{mfu:.3f} of the {against} peak — {'met' if mfu >= TARGET_MFU else 'MISSED'}")
    skipped = "\n" + "".join(f"\n- {k}: skipped ({v})" for k, v in results["skipped"].items())
    body = (
        f"Card: {card}; bf16 matmul peak measured {peak / 1e12:.1f} TFLOP/s"
        + (f", datasheet {sheet / 1e12:.0f} TFLOP/s" if sheet else ", no datasheet rate known")
        + f". Model: {fmt(float(results['params'] or 0))} parameters, {config.n_layers} layers, d_model "
        f"{config.d_model}, seq {seq}, batch {batch_size}; {step_flops / 1e12:.2f} TFLOP per step "
        f"(olmo.nn.flops). FSDP2 on a world of one, bf16 parameters, fp32 reduction; median of {steps} steps "
        f"({'CUDA events' if device.type == 'cuda' else 'wall clock'}) after 3 warm-up steps.\n\n"
        + markdown_table(["case", "step ms (median, min-max)", "tokens/s", "TFLOP/s", "MFU (measured peak)",
                          "MFU (datasheet)", "max memory GiB", "warm-up s"], rows)
        + skipped + target_line
    )
    report(args, "bench_gpu: ~1B preset, bf16, FSDP on one GPU", body, results, started)


if __name__ == "__main__":
    main()
