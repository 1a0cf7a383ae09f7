"""Greedy generation throughput: OLMo.generate against Hugging Face ``generate`` on the same weights.

The model is a tiny OLMo-2-style config (d_model 256, 4 layers, 4 heads, vocab 4096, RoPE, RMSNorm, norm_after,
QK-norm, SwiGLU, no biases) with random weights, exported to ``Olmo2ForCausalLM`` (``olmo.interop.to_hf``), so both
sides compute the same function (the script checks that they pick the same tokens). Both generate exactly
``--new-tokens`` tokens per prompt (EOS is blocked until then on both sides: ``min_steps`` / ``min_new_tokens``).
Runs alternate ours / theirs (who goes first alternates too), and each number is the median over ``--repeats``
runs, of the wall clock and of the process's CPU time (on a machine shared with other jobs, CPU time is the steadier
measure: it leaves out the time the process waits for a core).

    python benchmarks/bench_generate.py            # batch 1 and 8, 128 new tokens, 7 repeats
    python benchmarks/bench_generate.py --quick    # smoke test: a few tokens, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def build(seed: int = 0):
    from olmo import ModelConfig, OLMo
    from olmo.interop import to_hf

    config = ModelConfig(
        d_model=256, n_heads=4, n_layers=4, vocab_size=4096, max_sequence_length=1024, positional="rope",
        layer_norm_type="rms", norm_after=True, attention_layer_norm=True, activation_type="swiglu",
        include_bias=False, weight_tying=False, attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0,
        eos_token_id=0, pad_token_id=1,
    )
    torch.manual_seed(seed)
    ours = OLMo(config).eval()
    theirs = to_hf(ours)
    return ours, theirs


def run_ours(model, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    return model.generate(prompts, max_steps=new_tokens, min_steps=new_tokens).token_ids[:, 0]


def run_hf(model, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(
            prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, num_beams=1, pad_token_id=1, eos_token_id=0,
        )
    return out[:, prompts.shape[1]:]


def timed(fn, *args) -> tuple[float, float, torch.Tensor]:
    """(wall seconds, CPU seconds of this process, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 new tokens, 2 repeats")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on few shared cores, more threads wait on each other)")
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 8, 2
    torch.set_num_threads(args.threads)

    import transformers

    ours, theirs = build()
    results = []
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, median of {args.repeats} interleaved runs")
    for batch in args.batch_sizes:
        gen = torch.Generator().manual_seed(batch)
        prompts = torch.randint(2, 4096, (batch, args.prompt_len), generator=gen)
        run_ours(ours, prompts, 4)  # warm-up both (allocator, kernels, lazy imports)
        run_hf(theirs, prompts, 4)
        times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in ("ours", "hf")}
        same = True
        for r in range(args.repeats):
            outs = {}
            order = (("ours", run_ours, ours), ("hf", run_hf, theirs))
            for name, fn, model in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
                wall, cpu, outs[name] = timed(fn, model, prompts, args.new_tokens)
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
            same = same and torch.equal(outs["ours"], outs["hf"])
        tokens = batch * args.new_tokens
        row: dict[str, float | int | bool] = {"batch": batch, "same_tokens": same}
        for clock in ("wall", "cpu"):
            for name in ("ours", "hf"):
                row[f"{name}_{clock}_tokens_per_second"] = tokens / statistics.median(times[name][clock])
            row[f"{clock}_ratio"] = row[f"ours_{clock}_tokens_per_second"] / row[f"hf_{clock}_tokens_per_second"]
        results.append(row)
        print(f"batch {batch}: wall clock: ours {row['ours_wall_tokens_per_second']:.0f} tok/s, HF "
              f"{row['hf_wall_tokens_per_second']:.0f} tok/s, {row['wall_ratio']:.2f}x | CPU time: ours "
              f"{row['ours_cpu_tokens_per_second']:.0f} tok/s, HF {row['hf_cpu_tokens_per_second']:.0f} tok/s, "
              f"{row['cpu_ratio']:.2f}x | same greedy tokens: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
