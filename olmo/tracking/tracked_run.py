"""TrackedRun: one MLflow run as a training job writes it (from its main process only)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from olmo.tracking.config import TrackingConfig
from olmo.tracking.store import client, run_exists
from olmo.tracking.writer import MetricWriter

log = logging.getLogger(__name__)

MAX_PARAMS_PER_BATCH = 100
MAX_TAG_CHARS = 5000


class TrackedRun:
    def __init__(self, uri: str, run_id: str, resumed: bool, cfg: TrackingConfig | None = None) -> None:
        self.uri = uri
        self.run_id = run_id
        self.resumed = resumed  # an existing run continued (a job resumed from its checkpoint)
        self.cfg = cfg or TrackingConfig()
        self.client = client(uri)
        self.writer = MetricWriter(self.client, run_id)
        self._system_monitor: Any = None

    @classmethod
    def start(
        cls,
        uri: str,
        experiment_id: str,
        *,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        cfg: TrackingConfig | None = None,
    ) -> TrackedRun:
        """Continue ``run_id`` when it exists in the store (set RUNNING again), else create a new run."""
        c = client(uri)
        tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
        if run_id is not None and run_exists(c, run_id):
            c.update_run(run_id, status="RUNNING")
            resumed = True
        else:
            if run_id is not None:
                log.warning("MLflow run %s of the checkpoint is not in %s; starting a new run", run_id, uri)
            run_id = c.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
            resumed = False
        run = cls(uri, run_id, resumed, cfg)
        if resumed:
            run.set_tags(tags)
        return run

    # ----- writing ----------------------------------------------------------------------------------
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, _clip(str(v))) for k, v in tags.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, tags=items, synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params once; on a resumed run, params already there are kept (MLflow params are immutable)."""
        from mlflow.entities import Param

        params = {k: _clip(str(v)) for k, v in params.items()}
        if self.resumed:
            existing = self.client.get_run(self.run_id).data.params
            changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
            if changed:
                log.warning("resumed run %s: params %s changed since it started; keeping the first values",
                            self.run_id, changed)
            params = {k: v for k, v in params.items() if k not in existing}
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_PER_BATCH], synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Asynchronous: queued for the background writer."""
        self.writer.log(metrics, step)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifacts(self, folder: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def last_logged_step(self, key: str) -> int | None:
        history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=None)

    def start_system_metrics(self) -> None:
        if not self.cfg.system_metrics or self._system_monitor is not None:
            return
        try:
            import psutil  # noqa: F401  (MLflow's monitor needs it)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            log.info("system metrics off: psutil is not installed")
            return
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines per job
        self._system_monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=self.cfg.system_metrics_interval, resume_logging=self.resumed,
            tracking_uri=self.uri,
        )
        self._system_monitor.start()

    def flush(self) -> None:
        if not self.writer.flush():
            log.warning("MLflow run %s: metrics still pending after the flush timeout", self.run_id)

    def end(self, status: str, error: str | None = None) -> None:
        """Flush metrics, stop system metrics, set the final status (FINISHED, FAILED, KILLED)."""
        if self._system_monitor is not None:
            try:
                self._system_monitor.finish()
            except Exception as e:  # never let monitoring hide the job's outcome
                log.warning("stopping system metrics failed: %s", e)
            self._system_monitor = None
        self.writer.close()
        tags: dict[str, str] = {}
        if error is not None:
            tags["error"] = error
        if self.writer.errors:
            tags["tracking_errors"] = "; ".join(self.writer.errors)
        if tags:
            self.set_tags(tags)
        self.client.set_terminated(self.run_id, status=status)


def _clip(s: str, limit: int = MAX_TAG_CHARS) -> str:
    return s if len(s) <= limit else s[: limit - 3] + "..."
