"""run.py under submitit_local (parallel jobs; one job as 2 FSDP ranks) and torchrun, logging to sqlite."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from olmo.tracking import sqlite_uri

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path: Path, cache: str, cmd: list[str], *args: str, multirun: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OLMO_SWEEPS_CACHE": cache, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    argv = [*cmd, str(ROOT / "run.py"), *(["-m"] if multirun else []), "train=smoke",
            f"results_dir={tmp_path / 'results'}", *args]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def child_runs(tmp_path: Path) -> tuple[MlflowClient, list]:
    c = MlflowClient(sqlite_uri(tmp_path / "results" / "mlflow.db"))
    exp = c.get_experiment_by_name("olmo-sweeps")
    return c, [r for r in c.search_runs([exp.experiment_id]) if "config_hash" in r.data.tags]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_submitit_local_runs_the_jobs_of_a_sweep_in_parallel(tmp_path, data_cache):
    proc = run(tmp_path, data_cache, [sys.executable], "hydra/launcher=submitit_local", "attention=gqa,mqa",
               "train.max_steps=12")
    assert "2 jobs: 2 finished" in proc.stdout
    c, runs = child_runs(tmp_path)
    assert len(runs) == 2
    assert {r.data.tags["launcher"] for r in runs} == {"submitit_local"}
    assert {r.data.tags["attention"] for r in runs} == {"gqa", "mqa"}
    assert all(r.info.status == "FINISHED" for r in runs)
    a, b = sorted(runs, key=lambda r: r.info.start_time)
    assert b.info.start_time < a.info.end_time  # the two jobs overlapped: separate processes at once
    assert len({r.data.tags["sweep_run_id"] for r in runs}) == 1


@pytest.mark.slow
def test_submitit_local_with_2_tasks_is_one_fsdp_job_logged_once(tmp_path, data_cache):
    proc = run(tmp_path, data_cache, [sys.executable], "hydra/launcher=submitit_local",
               "hydra.launcher.tasks_per_node=2", "attention=gqa")
    assert "1 jobs: 1 finished" in proc.stdout
    c, runs = child_runs(tmp_path)
    assert len(runs) == 1
    r = runs[0]
    assert f"run {r.info.run_id[:12]}" in proc.stdout  # the summary has rank 0's outcome
    assert r.data.tags["world_size"] == "2" and r.data.params["derived.world_size"] == "2"
    assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "train/loss")) == list(range(1, 7))
    assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "eval/loss")) == [3, 6]


@pytest.mark.slow
def test_torchrun_runs_one_job_as_2_fsdp_ranks(tmp_path, data_cache):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port())]
    run(tmp_path, data_cache, torchrun, "pos=alibi", multirun=False)
    c, runs = child_runs(tmp_path)
    assert len(runs) == 1  # rank 1 logged nothing
    r = runs[0]
    assert (r.data.tags["launcher"], r.data.tags["world_size"], r.data.tags["pos"]) == ("torchrun", "2", "alibi")
    assert "sweep_run_id" not in r.data.tags and "mlflow.parentRunId" not in r.data.tags  # a single run, no sweep
    assert r.info.status == "FINISHED"
    assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "train/flops")) == list(range(1, 7))


def test_submitit_preemption_signal_checkpoints_stops_and_hands_over_to_submitit(tmp_path, data_cache, monkeypatch,
                                                                                 one_torch_thread):
    """submitit's USR2 (preemption / time limit) -> the trainer checkpoints after the step and stops; requeue()
    then calls submitit's own handler (which resubmits the job through the launcher's checkpoint())."""
    import signal

    from mlflow import MlflowClient

    from olmo.config import ExperimentConfig
    from olmo.tracking import JobContext, TrackingConfig, checkpoint_run_id, run_tracked
    from olmo.train import Callback
    from sweeps.job import SubmititPreemption

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")  # as inside a submitit job (one task: RANK set already)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    handed_over = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: handed_over.append(signum))  # "submitit's"

    class Preempt(Callback):
        name = "preempt"

        def on_step_end(self, trainer, metrics):
            if trainer.state.step == 2:
                os.kill(os.getpid(), signal.SIGUSR2)

    cfg = ExperimentConfig.from_dict({
        "model": dict(d_model=32, n_heads=4, n_layers=2, max_sequence_length=64, positional="rope"),
        "data": dict(cache_dir=data_cache, tokenizer=dict(vocab_size=512)),
        "train": dict(global_batch_size=4, seq_len=32, max_steps=6, eval_interval=None, eval_batches=1,
                      peak_flops_per_second=1e11),
    })
    ctx = JobContext(tracking=TrackingConfig(system_metrics=False), results_dir=str(tmp_path))
    try:
        preemption = SubmititPreemption()
        out = run_tracked(cfg, ctx, callbacks=[preemption, Preempt()])
        assert out.status == "preempted" and out.steps == 3  # stopped at the end of the next step
        assert preemption.signalled and handed_over == []
        assert signal.getsignal(signal.SIGUSR2) is not preemption._handle  # submitit's handler is back
        preemption.requeue()
        assert handed_over == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert checkpoint_run_id(out.save_folder) == out.run_id
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = c.get_run(out.run_id)
    assert run.info.status == "KILLED" and run.data.tags["stop_reason"] == "preempted"
    again = run_tracked(cfg, ctx)  # the requeued job
    assert (again.status, again.run_id, again.steps) == ("finished", out.run_id, 6)
    assert sorted(m.step for m in c.get_metric_history(out.run_id, "train/loss")) == list(range(1, 7))
