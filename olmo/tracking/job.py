"""run_tracked: one training job recorded in MLflow, skipped when already done, resumed when interrupted.

Hydra-free: ``run.py`` (through ``sweeps.job``) calls it with the composed config, and so can any script.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olmo.checkpoint import latest_checkpoint
from olmo.config import ExperimentConfig
from olmo.nn.linear import cpu_linear_kernel
from olmo.tracking.callback import MLflowCallback
from olmo.tracking.config import TrackingConfig
from olmo.tracking.naming import TAG_SWEEP_RUN_ID, axis_tags, config_hash, config_params, git_commit
from olmo.tracking.store import client, finished_run, prepare_store, resolve_tracking_uri
from olmo.tracking.tracked_run import TrackedRun
from olmo.train.callbacks import Callback

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"


@dataclass
class JobContext:
    """Where a job is recorded and what it is called; everything beyond the ExperimentConfig."""

    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    results_dir: str = "results"  # default save_folder: <results_dir>/checkpoints/<experiment>/<config hash>
    tracking_uri: str | None = None  # resolved by the driver; None: resolve_tracking_uri(tracking.uri, results_dir)
    experiment_id: str | None = None  # None: created/looked up here
    parent_run_id: str | None = None  # the sweep's own run (tag sweep_run_id)
    sweep_id: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)  # e.g. launcher, the Hydra choices, the overrides
    resolved_config: str | None = None  # YAML of the composed config, saved as the artifact config.yaml
    force: bool = False  # run even if this config already FINISHED; start from scratch (drops old checkpoints)
    raise_on_failure: bool = True  # False: record the failure and return it (the other jobs of a sweep go on)


@dataclass
class JobOutcome:
    status: str  # finished | failed | skipped | preempted (or another stop reason)
    config_hash: str
    run_id: str | None = None
    error: str | None = None
    save_folder: str | None = None
    steps: int | None = None
    final_eval_loss: float | None = None

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_save_folder(results_dir: str | os.PathLike, experiment: str, cfg_hash: str) -> Path:
    """Deterministic per config, so running a sweep again finds each job's checkpoints."""
    return Path(results_dir).resolve() / CHECKPOINTS_DIR / _safe(experiment) / cfg_hash


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def slurm_tags() -> dict[str, str]:
    """The SLURM job this process runs in (an array task as <array job id>_<task id>, as squeue and submitit
    name it), so a run leads to its job's logs; slurm_restart_count > 0 after a requeue. Empty outside SLURM."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return {}
    job_id = env["SLURM_JOB_ID"]
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    names = {"SLURM_JOB_ID": "slurm_raw_job_id", "SLURM_JOB_NODELIST": "slurm_nodelist",
             "SLURM_RESTART_COUNT": "slurm_restart_count"}
    return {"slurm_job_id": job_id, **{tag: env[var] for var, tag in names.items() if env.get(var)}}


def checkpoint_run_id(save_folder: str | os.PathLike) -> str | None:
    """The MLflow run id stored by MLflowCallback in the newest checkpoint of ``save_folder``."""
    ckpt = latest_checkpoint(save_folder)
    if ckpt is None:
        return None
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return (meta.get("callbacks") or {}).get(MLflowCallback.name, {}).get("run_id")


def interrupted_run_id(c: Any, experiment_id: str, cfg_hash: str, sweep_id: str) -> str | None:
    """The run of this config that an earlier attempt of the same sweep left KILLED before its first checkpoint
    (preempted or timed out early): the requeued job continues it instead of leaving two runs of one job.
    Training restarts from step 0 and is deterministic, so the steps that attempt logged are the same values and
    are not logged again (MLflowCallback skips steps already in the run)."""
    runs = c.search_runs(
        [experiment_id],
        filter_string=f"tags.config_hash = '{cfg_hash}' and tags.sweep_id = '{sweep_id}' "
                      "and attributes.status = 'KILLED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def run_tracked(
    cfg: ExperimentConfig,
    ctx: JobContext | None = None,
    callbacks: list[Callback] | None = None,
    model_hook: Callable[[Any], None] | None = None,
) -> JobOutcome:
    """Train ``cfg`` (see ``olmo.train.run_experiment``) as one MLflow run written by rank 0 only."""
    from olmo.distributed import init_distributed
    from olmo.distributed.env import barrier, broadcast_object
    from olmo.train import run_experiment

    ctx = ctx or JobContext()
    env = init_distributed(cfg.distributed.backend)
    cfg_hash = config_hash(cfg)
    if cfg.train.save_folder is None:
        folder = default_save_folder(ctx.results_dir, ctx.tracking.experiment, cfg_hash)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, save_folder=str(folder)))
    save_folder = cfg.train.save_folder
    outcome = JobOutcome(status="failed", config_hash=cfg_hash, save_folder=save_folder)

    tracked = ctx.tracking.enabled and env.is_main
    uri = experiment_id = None
    done = None
    if tracked:
        uri = ctx.tracking_uri or resolve_tracking_uri(ctx.tracking.uri, ctx.results_dir)
        experiment_id = ctx.experiment_id or prepare_store(uri, ctx.tracking.experiment)
        if not ctx.force:
            found = finished_run(client(uri), experiment_id, cfg_hash)
            done = found.info.run_id if found is not None else None
    done = broadcast_object(done)
    if done is not None:
        log.info("config %s already FINISHED in MLflow run %s: skipped (force=true reruns it)", cfg_hash, done)
        return dataclasses.replace(outcome, status="skipped", run_id=done)
    if ctx.force and env.is_main and Path(save_folder).exists():
        log.info("force: removing the old checkpoints in %s", save_folder)
        shutil.rmtree(save_folder)
    barrier()

    run: TrackedRun | None = None
    try:
        if tracked:
            tags = {
                "config_hash": cfg_hash,
                "sweep_id": ctx.sweep_id,
                "git_commit": git_commit(),
                "world_size": str(env.world_size),
                "seed": str(cfg.train.seed),
                "cpu_linear_kernel": cpu_linear_kernel(),  # rounds differently from F.linear (olmo/nn/linear.py)
                **slurm_tags(),
                **ctx.tags,
                **axis_tags(cfg.model),
            }
            if ctx.parent_run_id:
                tags[TAG_SWEEP_RUN_ID] = ctx.parent_run_id
            run_id = checkpoint_run_id(save_folder)
            if run_id is None and ctx.sweep_id:
                run_id = interrupted_run_id(client(uri), experiment_id, cfg_hash, ctx.sweep_id)
            run = TrackedRun.start(
                uri, experiment_id, run_id=run_id,
                run_name=ctx.run_name or ctx.tracking.run_name or cfg_hash, tags=tags, cfg=ctx.tracking,
            )
            outcome.run_id = run.run_id
            run.log_params(config_params(cfg))
            if ctx.resolved_config is not None:
                run.log_text(ctx.resolved_config, "config.yaml")
            log.info("MLflow run %s (%s) in %s", run.run_id, "resumed" if run.resumed else "new", uri)
        callback = MLflowCallback(run)
        result = run_experiment(cfg, callbacks=[callback, *(callbacks or [])], model_hook=model_hook)
    except BaseException as e:
        interrupted = isinstance(e, (KeyboardInterrupt, SystemExit))
        error = f"{type(e).__name__}: {e}"
        if run is not None:
            _end_quietly(run, "KILLED" if interrupted else "FAILED", error, traceback.format_exc())
        if ctx.raise_on_failure or interrupted:
            raise
        log.error("job failed: %s", error, exc_info=True)
        return dataclasses.replace(outcome, status="failed", error=error)

    outcome.steps = result.state.step
    outcome.final_eval_loss = result.final_eval_loss
    if run is not None:
        if result.status == "completed":
            final = Path(save_folder) / "final"
            if ctx.tracking.log_model and cfg.train.export_final_model and final.is_dir():
                run.log_artifacts(final, "model")
            run.end("FINISHED")
        else:  # preempted: the checkpoint holds the run id; running the job again continues this run
            run.set_tags({"stop_reason": result.status})
            run.end("KILLED")
    outcome.status = "finished" if result.status == "completed" else result.status
    return outcome


def _end_quietly(run: TrackedRun, status: str, error: str, trace: str) -> None:
    """Record the failure; a failure to record it must not hide the job's own error."""
    try:
        run.log_text(trace, "error.txt")
    except Exception as e:
        log.warning("could not save the traceback to MLflow: %s", e)
    try:
        run.end(status, error)
    except Exception as e:
        log.warning("could not mark MLflow run %s %s: %s", run.run_id, status, e)
