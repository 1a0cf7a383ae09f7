"""The job function of run.py: one composed config -> one tracked training job (olmo.tracking.run_tracked)."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from olmo.tracking import JobContext, JobOutcome, run_tracked
from olmo.tracking.ui import TAG_RUN_COLOR, TAG_VARIANT, job_color
from olmo.train.callbacks import Callback
from sweeps.driver import JOB_FILE, SweepInfo, launcher_name, run_name, variant_name
from sweeps.schema import to_configs

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 128 + 15  # as if killed by SIGTERM
# Hydra choices recorded as tags (the axes themselves are tagged from the model config: what was trained).
CHOICE_TAGS = ("model", "data", "optim", "scheduler", "train", "distributed", "sweep")


def run_job(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    choices = dict(hc.runtime.choices)
    info = SweepInfo.read(hc.sweep.dir) if multirun else None
    num = int(hc.job.num) if multirun else 0
    try:
        composed = to_configs(cfg, hc.runtime.cwd)
        if composed.threads is not None:
            import torch

            torch.set_num_threads(composed.threads)
        tags = {k: str(choices[k]) for k in CHOICE_TAGS if choices.get(k) is not None}
        tags["launcher"] = launcher_name(choices)
        tags["overrides"] = " ".join(overrides)
        swept = info.swept_keys if info else []
        tags[TAG_VARIANT] = variant_name(overrides, swept)
        if multirun:
            tags[TAG_RUN_COLOR] = job_color(num)
        ctx = JobContext(
            tracking=composed.tracking,
            results_dir=str(composed.results_dir),
            tracking_uri=info.tracking_uri if info else None,
            experiment_id=info.experiment_id if info else None,
            parent_run_id=info.parent_run_id if info else None,
            sweep_id=info.sweep_id if info else None,
            run_name=run_name(overrides, swept, composed.experiment.train.seed),
            tags=tags,
            resolved_config=OmegaConf.to_yaml(cfg, resolve=True),
            force=composed.force,
            raise_on_failure=not multirun,  # in a sweep, the other jobs go on; the driver reports failures
        )
        preemption = SubmititPreemption()
        outcome = run_tracked(composed.experiment, ctx, callbacks=[preemption])
    except Exception as e:
        if not multirun:
            raise
        log.exception("job #%d failed before training", num)
        outcome = JobOutcome(status="failed", config_hash="", error=f"{type(e).__name__}: {e}")
    if _global_rank() == 0:  # after run_tracked: init_distributed has exported submitit's RANK
        _write_outcome(Path(hc.runtime.output_dir), num, overrides, outcome)
    if outcome.status == "failed":
        log.error("job #%d failed: %s", num, outcome.error)
    else:
        log.info("job #%d %s (MLflow run %s)", num, outcome.status, outcome.run_id)
    if outcome.status == "preempted":
        if "SUBMITIT_EXECUTOR" in os.environ:
            preemption.requeue()
        else:  # SIGTERM/SIGUSR1 to a local run: stop here (the sweep too); running it again resumes
            log.warning("job #%d stopped by a signal after checkpointing; run the same command to resume", num)
            raise SystemExit(EXIT_PREEMPTED)
    if "SUBMITIT_EXECUTOR" in os.environ:  # a process of its own: release the process group
        from olmo.distributed.env import shutdown_distributed

        shutdown_distributed()
    return outcome.asdict()


def _global_rank() -> int:
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SUBMITIT_EXECUTOR" in os.environ:
        try:
            import submitit

            return int(submitit.JobEnvironment().global_rank)
        except Exception:  # noqa: BLE001  (not in a submitit job after all)
            pass
    return int(os.environ.get("SLURM_PROCID", "0"))


def _write_outcome(folder: Path, num: int, overrides: list[str], outcome: JobOutcome) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (JOB_FILE + ".tmp")
    tmp.write_text(json.dumps({"num": num, "overrides": overrides, **outcome.asdict()}, indent=2))
    os.replace(tmp, folder / JOB_FILE)


class SubmititPreemption(Callback):
    """Under submitit: its preemption/timeout signal (USR2) makes the trainer checkpoint and stop at the end of
    the step (the trainer's Checkpointer does this on SIGUSR1); then ``requeue()`` hands over to submitit's own
    handler, which calls the launcher's ``checkpoint()`` (resubmit the same job) and requeues it. The requeued
    job finds its checkpoint (the save folder is derived from the config hash) and continues the same MLflow run.
    """

    name = "submitit_preemption"

    def __init__(self) -> None:
        self.signalled = False
        self._signum: int | None = None
        self._submitit_handler: Any = None

    def on_train_start(self, trainer: Any) -> None:
        if "SUBMITIT_EXECUTOR" not in os.environ:
            return
        try:
            from submitit.core.job_environment import JobEnvironment

            self._signum = JobEnvironment._usr_sig()
            self._submitit_handler = signal.signal(self._signum, self._handle)
        except (ImportError, ValueError, AttributeError) as e:  # not the main thread, or another submitit
            log.warning("submitit preemption handling off: %s", e)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signalled = True
        # The Checkpointer saves after this step and stops ("preempted"). Once training is over it no longer listens
        # to SIGUSR1, whose default action would kill the process: a signal that late has nothing left to save.
        if callable(signal.getsignal(signal.SIGUSR1)):
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_train_end(self, trainer: Any, status: str) -> None:
        if self._signum is not None and self._submitit_handler is not None:
            signal.signal(self._signum, self._submitit_handler)

    def requeue(self) -> None:
        if self.signalled and callable(self._submitit_handler) and self._signum is not None:
            self._submitit_handler(self._signum, None)  # submitit: checkpoint(), requeue, exit
