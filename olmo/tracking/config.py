"""TrackingConfig: where and how a job is recorded in MLflow."""

from __future__ import annotations

from dataclasses import dataclass

from olmo.errors import bad_value


@dataclass
class TrackingConfig:
    enabled: bool = True
    # None: $MLFLOW_TRACKING_URI, else an sqlite store under the results folder (sqlite:////abs/mlflow.db).
    uri: str | None = None
    experiment: str = "olmo-sweeps"  # the MLflow experiment every run of a sweep goes to
    run_name: str | None = None  # None: the job's overrides in a sweep, else the config hash
    log_model: bool = True  # the final unsharded model folder (train.save_folder/final) as an artifact
    system_metrics: bool = True  # CPU/memory/disk/network (and GPU with pynvml); needs psutil
    system_metrics_interval: float = 10.0  # seconds between system metric samples

    def validate(self) -> None:
        if not self.experiment:
            raise bad_value("tracking.experiment", self.experiment, "a non-empty experiment name")
        if self.system_metrics_interval <= 0:
            raise bad_value("tracking.system_metrics_interval", self.system_metrics_interval, "a positive number")
