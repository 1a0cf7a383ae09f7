"""Smoke tests of the benchmark scripts: each ``--quick`` mode runs end to end and its numbers are sane.

Not timing assertions (the machine is shared): MFU in (0, 1), throughputs and ratios positive and finite, the
Markdown log appended to (never rewritten).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

pytestmark = pytest.mark.slow


def run_quick(script: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{script}.json"
    doc = tmp_path / "benchmarks.md"
    cmd = [sys.executable, str(BENCH / script), "--quick", "--json", str(out), "--doc", str(doc), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = doc.read_text()
    assert text.startswith("# Benchmarks"), text[:200]
    assert "--quick" in text and "Machine:" in text and "Command:" in text
    return json.loads(out.read_text())


def positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def fraction(x: float) -> bool:
    return positive(x) and x < 1


def test_bench_peak(tmp_path):
    r = run_quick("bench_peak.py", tmp_path)
    assert {"fp32 1t", "bf16 1t"} <= set(r["peaks"])
    for peak in r["peaks"].values():
        assert positive(peak["flops_per_second"]) and positive(peak["trainer_estimate"])
    for case in r["cases"].values():
        assert positive(case["flops_per_second"])


def test_bench_train(tmp_path):
    r = run_quick("bench_train.py", tmp_path)
    cases = r["shapes"]["quick"]["cases"]
    assert {"ours fp32-eager", "hf_olmo fp32-eager", "ours_llama fp32-eager", "hf_llama fp32-eager",
            "ours bf16-eager"} <= set(cases)
    for name, c in cases.items():
        assert fraction(c["mfu"]), (name, c)
        assert positive(c["tokens_per_second"]) and positive(c["step_seconds"]), (name, c)
        assert positive(c["vs_hf_olmo_fp32_eager"]), (name, c)
        assert positive(c["vs_hf_olmo_same_mode"]), (name, c)
    assert cases["hf_olmo fp32-eager"]["vs_hf_olmo_fp32_eager"] == 1.0


def test_bench_axes(tmp_path):
    r = run_quick("bench_axes.py", tmp_path)
    variants = r["variants"]
    axes = {v["axis"] for v in variants.values()}
    assert {"base", "attention", "attention_backend", "positional", "layer_norm_type", "activation_type",
            "block_type"} <= axes
    for name, v in variants.items():
        assert fraction(v["mfu"]), (name, v)
        assert positive(v["tokens_per_second"]) and positive(v["vs_base_tokens_per_second"]), (name, v)
        assert positive(v["flops_per_token"]), (name, v)


def test_bench_overhead(tmp_path, data_cache):
    r = run_quick("bench_overhead.py", tmp_path, "--cache-dir", data_cache)
    cases = r["cases"]
    assert {"bare fp32-eager", "trainer fp32-eager"} <= set(cases)
    for name, c in cases.items():
        assert fraction(c["mfu"]), (name, c)
        assert positive(c["tokens_per_second"]) and positive(c["step_seconds"]), (name, c)
        assert math.isfinite(c["overhead_vs_bare"]) and c["overhead_vs_bare"] > -1, (name, c)
    assert "SpeedMonitor" in cases["trainer fp32-eager"]["callbacks"]


def test_bench_gpu_quick_runs_the_fsdp_step_where_there_is_no_gpu(tmp_path, data_cache):
    """--quick runs the GPU script's whole path (a world-of-one process group, FSDP2, bf16, the trainer's
    loss and AdamW; the real trainer) on tiny shapes: on CUDA where there is one, else on CPU with gloo."""
    r = run_quick("bench_gpu.py", tmp_path, "--cache-dir", data_cache)
    assert {"eager", "trainer"} <= set(r["cases"]) and positive(r["peak_measured"]) and r["params"] > 0
    for name, c in r["cases"].items():
        assert fraction(c["mfu_measured"]), (name, c)
        assert positive(c["tokens_per_second"]) and positive(c["step_seconds"]), (name, c)
    # FLOPs per step are the platform's exact count for the quick model.
    from olmo.config import ModelConfig
    from olmo.nn.flops import flops_per_token

    sys.path.insert(0, str(BENCH))
    try:
        from bench_gpu import model_fields
    finally:
        sys.path.remove(str(BENCH))
    config = ModelConfig(**model_fields(quick=True))
    assert r["step_flops"] == r["batch_size"] * r["seq_len"] * flops_per_token(config, r["seq_len"]).total


def test_bench_gpu_without_a_gpu_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--no-doc"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "needs a CUDA GPU" in proc.stderr
