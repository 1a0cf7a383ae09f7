"""The CUDA paths: the trainer in bf16 on a GPU, resume there, SDPA's flash kernel, flash-attn's absence.

Run on a machine with a CUDA GPU (skipped without one); benchmarks/bench_gpu.py covers FSDP2 on one GPU and
its MFU. flash-attn against SDPA is tests/test_model_flash.py (needs the package too).
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from model_helpers import random_ids, tiny_config
from train_helpers import StopAt, losses_of, tiny

from olmo import OLMo, OLMoConfigurationError
from olmo.train import run_experiment

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_trainer_trains_in_bf16_on_the_gpu_with_a_sane_mfu(data_cache):
    cfg = tiny(data_cache, max_steps=40, eval_interval=20, precision="bf16", peak_flops_per_second=None)
    result = run_experiment(cfg)
    assert result.status == "completed"
    losses = losses_of(result)
    assert all(math.isfinite(v) for v in losses.values())
    assert sum(list(losses.values())[-5:]) / 5 < losses[1] - 0.5  # it learns (6.2 -> 5.3 seen on an H200)
    # The MFU denominator is the GPU's bf16 rate measured at 8192³: a tiny model is far below it.
    mfus = [m["train/mfu"] for m in result.history if "train/mfu" in m]
    assert mfus and all(0 < m < 0.5 for m in mfus), mfus


def test_resume_on_the_gpu_continues_the_same_losses(data_cache, tmp_path):
    """Stopped at step 4 and resumed, the run gives the uninterrupted run's losses (to bf16 kernels'
    run-to-run noise: SDPA's backward kernels on CUDA may use atomics)."""
    train = dict(max_steps=8, precision="bf16")
    straight = run_experiment(tiny(data_cache, str(tmp_path / "a"), **train))
    first = run_experiment(tiny(data_cache, str(tmp_path / "b"), **train), callbacks=[StopAt(4)])
    assert first.status == "stopped" and first.state.step == 4
    resumed = run_experiment(tiny(data_cache, str(tmp_path / "b"), **train))
    assert resumed.history[0]["step"] == 5
    combined = {**losses_of(first), **losses_of(resumed)}
    expected = losses_of(straight)
    assert combined.keys() == expected.keys()
    for step, loss in expected.items():
        assert combined[step] == pytest.approx(loss, rel=1e-3, abs=1e-3), step


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_sdpa_attention_runs_on_the_flash_kernel(n_kv_heads):
    """Our causal attention call is eligible for SDPA's flash kernel (no explicit mask): restricted to it,
    forward and backward run, and the logits equal the eager reference kernel's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = tiny_config(d_model=128, n_heads=4, n_kv_heads=n_kv_heads, max_sequence_length=64, positional="rope")
    torch.manual_seed(0)
    sdpa = OLMo(config, device="cuda")
    eager = OLMo(config.replace(attention_backend="eager"), device="cuda")
    eager.load_state_dict(sdpa.state_dict())
    ids = random_ids(2, 64).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            out = sdpa(ids).logits
            out.float().pow(2).mean().backward()
        with torch.no_grad():
            expected = eager(ids).logits
    torch.testing.assert_close(out.float(), expected.float(), atol=3e-2, rtol=3e-2)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in sdpa.parameters())


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed")
def test_flash_attn_backend_without_the_package_says_what_to_install():
    with pytest.raises(OLMoConfigurationError, match="flash-attn") as e:
        OLMo(tiny_config(attention_backend="flash_attn"), device="cuda")
    assert "sdpa" in str(e.value)
