"""Experiment tracking in MLflow: the trainer callback, the run, the store, and a tracked job.

Hydra-free (only ``run.py`` and ``sweeps/`` know Hydra): ``run_tracked(cfg, JobContext(...))`` trains one
ExperimentConfig as one MLflow run, child of a sweep's parent run when given one.
"""

from olmo.tracking.callback import MLflowCallback
from olmo.tracking.config import TrackingConfig
from olmo.tracking.job import JobContext, JobOutcome, checkpoint_run_id, default_save_folder, run_tracked
from olmo.tracking.naming import axis_tags, config_hash, config_params, flatten, git_commit
from olmo.tracking.store import prepare_store, resolve_tracking_uri, sqlite_uri
from olmo.tracking.tracked_run import TrackedRun
from olmo.tracking.writer import MetricWriter

__all__ = [
    "JobContext",
    "JobOutcome",
    "MLflowCallback",
    "MetricWriter",
    "TrackedRun",
    "TrackingConfig",
    "axis_tags",
    "checkpoint_run_id",
    "config_hash",
    "config_params",
    "default_save_folder",
    "flatten",
    "git_commit",
    "prepare_store",
    "resolve_tracking_uri",
    "run_tracked",
    "sqlite_uri",
]
