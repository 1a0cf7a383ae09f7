"""Shared pieces of the training tests: a tiny experiment on Shakespeare and a job runner."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from olmo.config import ExperimentConfig
from olmo.train import Callback

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "jobs" / "train_job.py"


def tiny(cache: str, save_folder: str | None = None, **train) -> ExperimentConfig:
    """A tiny model on Shakespeare with a 512-token BPE: a step takes milliseconds on 2 cores."""
    d = {
        "model": dict(d_model=32, n_heads=4, n_layers=2, max_sequence_length=64, positional="rope",
                      attention_dropout=0.0, residual_dropout=0.1, embedding_dropout=0.0),
        "data": dict(cache_dir=cache, tokenizer=dict(vocab_size=512)),
        "optim": dict(lr=3e-3),
        "scheduler": dict(name="cosine", warmup_steps=2),
        "train": {**dict(global_batch_size=8, seq_len=32, max_steps=8, eval_interval=4, eval_batches=2,
                         peak_flops_per_second=1e11, save_folder=save_folder), **train},
    }
    return ExperimentConfig.from_dict(d)


def run_job(cfg: ExperimentConfig, tmp: Path, *args: str, nproc: int = 1, check: bool = True):
    cfg_file, out = tmp / f"cfg-{os.urandom(4).hex()}.json", tmp / f"out-{os.urandom(4).hex()}.json"
    cfg_file.write_text(json.dumps(cfg.asdict()))
    if nproc == 1:
        cmd = [sys.executable, str(JOB), str(cfg_file), str(out), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(_free_port()), str(JOB), str(cfg_file), str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text()) if out.exists() else None
    return proc, result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses_of(result) -> dict[int, float]:
    return {int(m["step"]): m["train/loss"] for m in result.history}


class StopAt(Callback):
    """Checkpoint (unless ``checkpoint`` is False) and stop cleanly after step K, as a preempted job does;
    the run ends with ``status``."""

    name = "stop_at"

    def __init__(self, step: int, status: str = "stopped", checkpoint: bool = True) -> None:
        self.step, self.status, self.checkpoint = step, status, checkpoint

    def on_step_end(self, trainer, metrics):
        if trainer.state.step == self.step:
            if self.checkpoint:
                trainer.save_checkpoint()
            trainer.request_stop(self.status)

