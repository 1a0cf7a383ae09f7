"""A training job for tests that need real processes (torchrun, signals, SIGKILL).

Usage: python tests/jobs/train_job.py CONFIG_JSON OUT_JSON [--kill-on-save N] [--stop-at K]
Writes {"status", "losses": {step: loss}, "final_step"} to OUT_JSON (rank 0 only).
--kill-on-save N: SIGKILL this process while it commits its N-th checkpoint (after the shards are written,
before the rename that completes it), as a crash mid-write would.
--stop-at K: save a checkpoint and stop after step K (a clean stop, like a preemption).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from olmo.config import ExperimentConfig
from olmo.train import Callback, run_experiment


class StopAt(Callback):
    name = "stop_at"

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, metrics):
        if trainer.state.step == self.step:
            trainer.save_checkpoint()
            trainer.request_stop("stopped")


class PrintSteps(Callback):
    """Lets a parent process see progress (to time its signals)."""

    name = "print_steps"

    def on_step_end(self, trainer, metrics):
        if trainer.env.is_main:
            print(f"STEP {trainer.state.step} {metrics['train/loss']!r}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("out")
    parser.add_argument("--kill-on-save", type=int, default=None)
    parser.add_argument("--stop-at", type=int, default=None)
    args = parser.parse_args()
    cfg = ExperimentConfig.from_dict(json.loads(open(args.config).read()))
    if args.kill_on_save is not None:
        import olmo.checkpoint.checkpointer as ck

        saves = {"n": 0}
        real_commit = ck._commit

        def commit(tmp, final):
            saves["n"] += 1
            if saves["n"] == args.kill_on_save:
                os.kill(os.getpid(), signal.SIGKILL)
            real_commit(tmp, final)

        ck._commit = commit
    callbacks = [PrintSteps()]
    if args.stop_at is not None:
        callbacks.append(StopAt(args.stop_at))
    result = run_experiment(cfg, callbacks=callbacks)
    if int(os.environ.get("RANK", "0")) == 0:
        losses = {int(m["step"]): m["train/loss"] for m in result.history}
        with open(args.out, "w") as f:
            json.dump({"status": result.status, "losses": losses, "final_step": result.state.step}, f)
    sys.exit(0)


if __name__ == "__main__":
    main()
