"""Training on real data: learning, budgets, accumulation, precision, schedules, checkpoint faults."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from train_helpers import JOB, StopAt, losses_of, run_job, tiny

from olmo.checkpoint import latest_checkpoint, list_checkpoints, load_unsharded
from olmo.config import SchedulerConfig
from olmo.errors import OLMoConfigurationError
from olmo.nn.flops import flops_per_token
from olmo.train import NonFiniteLossError, build_job, run_experiment, training_budget
from olmo.train.schedule import lr_at


# ----- learning -----------------------------------------------------------------------------------------
def test_tiny_model_learns_shakespeare_below_unigram_entropy(data_cache, tmp_path):
    cfg = tiny(data_cache, max_steps=300, eval_interval=150, eval_batches=4)
    cfg.train.global_batch_size = 16
    cfg.model.residual_dropout = 0.0
    cfg.model.d_model = 64
    job = build_job(cfg)
    tokens = np.asarray(job.data.train.tokens)
    counts = np.bincount(tokens, minlength=job.model_config.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())
    result = job.trainer.fit()
    assert result.status == "completed"
    first, last = result.history[0]["train/loss"], result.final_eval_loss
    # Measured: unigram entropy 5.18 nats at vocab 512; eval loss 4.00 after 150 steps, 3.79 after 300.
    assert first > unigram_entropy
    assert last < unigram_entropy - 1.0, (last, unigram_entropy)
    assert result.eval_history[-1]["eval/perplexity"] == pytest.approx(math.exp(last), rel=1e-6)


def test_step_metrics_are_complete_and_consistent(data_cache):
    result = run_experiment(tiny(data_cache, max_steps=3, eval_interval=None))
    budget = training_budget(build_job(tiny(data_cache, max_steps=3)).model_config, tiny(data_cache).train)
    for i, m in enumerate(result.history, start=1):
        for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens", "train/flops",
                    "train/tokens_per_second", "train/mfu", "train/memory_bytes"):
            assert key in m and math.isfinite(m[key]), key
        assert m["train/tokens"] == i * 8 * 32
        assert m["train/flops"] == i * budget.flops_per_step
        assert 0 < m["train/mfu"] < 1
    assert len(result.eval_history) == 1  # eval_interval=None: once at the end


# ----- budgets ------------------------------------------------------------------------------------------
def test_flop_budget_yields_exact_step_count(data_cache):
    cfg = tiny(data_cache, max_steps=None, max_flops=0)
    model_cfg = build_job(tiny(data_cache)).model_config
    per_step = 8 * 32 * flops_per_token(model_cfg, 32).total
    cfg.train.max_flops = 7.5 * per_step
    result = run_experiment(cfg)
    assert result.state.step == 7
    assert result.state.flops == 7 * per_step <= cfg.train.max_flops
    cfg.train.max_flops = None
    cfg.train.max_tokens = 5 * 8 * 32 + 3
    assert run_experiment(cfg).state.step == 5


def test_budget_smaller_than_one_step_fails_clearly(data_cache):
    cfg = tiny(data_cache, max_steps=None, max_flops=10.0)
    with pytest.raises(OLMoConfigurationError, match=r"train\.max_flops=10 is less than one step"):
        build_job(cfg)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(seq_len=128), "train.seq_len"),
        (dict(global_batch_size=0), "train.global_batch_size"),
        (dict(micro_batch_size=3), "train.micro_batch_size"),
        (dict(precision="fp16"), "train.precision"),
        (dict(max_tokens=100), "set exactly one of max_steps, max_tokens, max_flops"),
    ],
)
def test_bad_train_config_fails_before_anything_runs(data_cache, change, field):
    cfg = tiny(data_cache)
    for k, v in change.items():
        setattr(cfg.train, k, v)
    with pytest.raises(OLMoConfigurationError, match=field.replace(".", r"\.")):
        build_job(cfg)


# ----- the step -----------------------------------------------------------------------------------------
def test_gradient_accumulation_matches_one_big_batch(data_cache):
    cfg = tiny(data_cache, max_steps=3, eval_interval=None, micro_batch_size=2)
    cfg.model.residual_dropout = 0.0
    whole_cfg = tiny(data_cache, max_steps=3, eval_interval=None)
    whole_cfg.model.residual_dropout = 0.0
    whole = run_experiment(whole_cfg)
    accumulated = run_experiment(cfg)
    for a, b in zip(whole.history, accumulated.history, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)


def test_bf16_autocast_and_z_loss_train(data_cache):
    result = run_experiment(tiny(data_cache, max_steps=4, precision="bf16", z_loss_multiplier=1e-4))
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]
    assert all(m["train/z_loss"] > 0 for m in result.history)


@pytest.mark.parametrize("strategy", ["whole_layer", "one_in_two", "fine_grained"])
def test_activation_checkpointing_gives_the_same_losses(data_cache, strategy):
    base = run_experiment(tiny(data_cache, max_steps=3, eval_interval=None))
    cfg = tiny(data_cache, max_steps=3, eval_interval=None)
    cfg.distributed.activation_checkpointing = strategy
    ckpt = run_experiment(cfg)
    assert losses_of(ckpt) == losses_of(base)  # dropout RNG is replayed: bitwise equal


def test_document_masking_trains(data_cache):
    result = run_experiment(tiny(data_cache, max_steps=3, document_masking=True))
    assert result.status == "completed" and math.isfinite(result.final_eval_loss)


def test_schedules_warm_up_then_decay():
    cos = SchedulerConfig(name="cosine", warmup_steps=10, alpha_f=0.1)
    assert lr_at(0, 1.0, 100, cos) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 100, cos) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 100, cos) == pytest.approx(0.1)
    lin = SchedulerConfig(name="linear", warmup_steps=0, alpha_f=0.0)
    assert lr_at(50, 1.0, 100, lin) == pytest.approx(0.5)
    inv = SchedulerConfig(name="inverse_sqrt", warmup_steps=4)
    assert lr_at(16, 1.0, 100, inv) == pytest.approx(0.5)
    assert lr_at(5, 2.0, 100, SchedulerConfig(name="constant")) == 2.0


# ----- checkpoints and faults ---------------------------------------------------------------------------
def test_resume_is_bitwise_identical_in_one_process(data_cache, tmp_path):
    straight = run_experiment(tiny(data_cache, str(tmp_path / "a"), max_steps=8))
    first = run_experiment(tiny(data_cache, str(tmp_path / "b"), max_steps=8), callbacks=[StopAt(4)])
    assert first.status == "stopped" and first.state.step == 4
    resumed = run_experiment(tiny(data_cache, str(tmp_path / "b"), max_steps=8))
    assert resumed.history[0]["step"] == 5
    combined = {**losses_of(first), **losses_of(resumed)}
    assert combined == losses_of(straight)  # exact float equality, with dropout on
    assert resumed.eval_history[-1]["eval/loss"] == straight.eval_history[-1]["eval/loss"]
    # The final export loads without the trainer and gives the trained model's logits.
    model = load_unsharded(tmp_path / "b" / "final")
    assert model.config.vocab_size == 512


def test_keep_last_checkpoints(data_cache, tmp_path):
    run_experiment(tiny(data_cache, str(tmp_path), max_steps=6, checkpoint_interval=1, keep_last=2))
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step00000005", "step00000006"]
    assert not list(tmp_path.glob("*.tmp"))


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(data_cache, tmp_path):
    calls = {"n": 0}

    def poison(model):
        def hook(module, args, output):
            calls["n"] += 1
            if calls["n"] == 4:  # the 4th forward: step 4 (eval runs only at the end here)
                return output.__class__(output.logits * float("nan"), *output[1:])
            return output

        model.register_forward_hook(hook)

    cfg = tiny(data_cache, str(tmp_path), max_steps=8, checkpoint_interval=2, eval_interval=None)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 4: stopped before the optimizer step"):
        run_experiment(cfg, model_hook=poison)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step00000002"]
    assert not list(tmp_path.glob("*.tmp"))
    # The checkpoint is good: a fresh run resumes from it and finishes.
    resumed = run_experiment(tiny(data_cache, str(tmp_path), max_steps=8, checkpoint_interval=2))
    assert resumed.history[0]["step"] == 3 and resumed.status == "completed"


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_resumes_from_the_previous_one(data_cache, tmp_path):
    cfg = tiny(data_cache, str(tmp_path / "ck"), max_steps=8, checkpoint_interval=2)
    proc, _ = run_job(cfg, tmp_path, "--kill-on-save", "2", check=False)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(tmp_path / "ck")] == ["step00000002"]
    assert list((tmp_path / "ck").glob("step00000004.tmp"))  # the half-written one is left, and ignored
    _, resumed = run_job(cfg, tmp_path)
    _, straight = run_job(tiny(data_cache, str(tmp_path / "straight"), max_steps=8), tmp_path)
    assert min(map(int, resumed["losses"])) == 3
    assert all(resumed["losses"][k] == straight["losses"][k] for k in resumed["losses"])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_job_resumes(data_cache, tmp_path):
    cfg = tiny(data_cache, str(tmp_path / "ck"), max_steps=400, eval_interval=None)
    cfg.scheduler.name = "constant"  # the LR must not depend on max_steps, which changes below
    cfg_file, out = tmp_path / "cfg.json", tmp_path / "out.json"
    cfg_file.write_text(json.dumps(cfg.asdict()))
    # One thread, as run_job's runs below: LayerNorm's weight gradients round differently on 2 threads, so a
    # checkpoint written on 2 threads does not resume into the 1-thread run bit for bit.
    proc = subprocess.Popen([sys.executable, str(JOB), str(cfg_file), str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:
        if line.startswith("STEP 3 "):
            proc.send_signal(signal.SIGTERM)
            break
    proc.stdout.read()
    assert proc.wait(timeout=120) == 0
    first = json.loads(out.read_text())
    assert first["status"] == "preempted"
    ckpt = latest_checkpoint(tmp_path / "ck")
    assert ckpt is not None and int(ckpt.name[4:]) == first["final_step"] >= 3
    cfg.train.max_steps = first["final_step"] + 3
    straight_cfg = tiny(data_cache, str(tmp_path / "straight"), max_steps=400, eval_interval=None)
    straight_cfg.train.max_steps = cfg.train.max_steps
    straight_cfg.scheduler.name = "constant"
    _, resumed = run_job(cfg, tmp_path)
    _, straight = run_job(straight_cfg, tmp_path)
    assert resumed["status"] == "completed"
    assert min(map(int, resumed["losses"])) == first["final_step"] + 1
    for k, v in resumed["losses"].items():
        assert straight["losses"][k] == v


@pytest.mark.slow
# Dynamo itself reads .grad while it wraps a traced tensor (torch 2.13), not our code.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_compiled_blocks_give_the_eager_losses_and_compile_once(data_cache):
    """train.compile=true compiles each block; all blocks share one graph per grad mode (the RoPE table is
    built before them, so no block changes what the next one was specialised on), and training gives the eager
    losses."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    def no_dropout(**train):  # dropout draws different random numbers in compiled code
        cfg = tiny(data_cache, max_steps=4, eval_interval=None, **train)
        cfg.model = cfg.model.replace(residual_dropout=0.0)
        return cfg

    eager = run_experiment(no_dropout())
    torch._dynamo.reset()
    counters.clear()
    compiled = run_experiment(no_dropout(compile=True))
    # One graph for the training steps and one for the final evaluation (no_grad); without the RoPE table built
    # before the blocks, the second block recompiled the training graph (3).
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    eager_losses, compiled_losses = losses_of(eager), losses_of(compiled)
    assert eager_losses.keys() == compiled_losses.keys()
    for step, loss in eager_losses.items():
        assert compiled_losses[step] == pytest.approx(loss, rel=1e-4), step


def test_next_token_loss_is_the_sliced_definition_with_its_gradient():
    import torch
    import torch.nn.functional as F

    from olmo.train.loss import next_token_loss

    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11, requires_grad=True)
    ids = torch.randint(0, 11, (3, 7))
    ce, z = next_token_loss(logits, ids, z_loss_multiplier=1e-2)
    sliced = logits[:, :-1].reshape(-1, 11)
    want_ce = F.cross_entropy(sliced, ids[:, 1:].reshape(-1), reduction="sum")
    want_z = 1e-2 * torch.logsumexp(sliced, -1).pow(2).sum()
    torch.testing.assert_close((ce, z), (want_ce, want_z))
    got = torch.autograd.grad(ce + z, logits)[0]
    torch.testing.assert_close(got, torch.autograd.grad(want_ce + want_z, logits)[0])
    assert got[:, -1].abs().max() == 0  # the last position predicts nothing
