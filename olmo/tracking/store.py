"""The MLflow store: its URI, creating it once, and the queries a sweep needs (finished runs, children).

MLflow's sqlite store must be created by one process before jobs open it at the same time (its schema
migration is not safe to run concurrently): drivers call :func:`prepare_store` before launching any job.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
FINISHED = "FINISHED"


def resolve_tracking_uri(configured: str | None, results_dir: str | os.PathLike) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else ``sqlite:////<abs results_dir>/mlflow.db``."""
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return sqlite_uri(Path(results_dir) / STORE_FILE)


def sqlite_uri(path: str | os.PathLike) -> str:
    return "sqlite:///" + str(Path(path).expanduser().resolve())


def sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def prepare_store(uri: str, experiment: str, artifact_root: str | os.PathLike | None = None) -> str:
    """Create the store (tables) and the experiment if needed; return the experiment id.

    ``artifact_root``: where a new experiment of a local (sqlite) store keeps artifacts; default
    ``<store folder>/mlartifacts`` (never the working directory's ./mlruns).
    """
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    c = client(uri)
    c.search_experiments(max_results=1)  # creates the tables of a new sqlite store, once
    from olmo.tracking.ui import mark_model_training

    root = artifact_root if artifact_root is not None else _default_artifacts(db)
    experiment_id = ensure_experiment(c, experiment, root)
    mark_model_training(c, experiment_id)
    return experiment_id


def _default_artifacts(db: Path | None) -> Path | None:
    return db.parent / ARTIFACTS_DIR if db is not None else None


def ensure_experiment(c: Any, name: str, artifact_root: str | os.PathLike | None = None) -> str:
    from mlflow.exceptions import MlflowException

    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            c.restore_experiment(found.experiment_id)
        return found.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root is not None else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:  # created by another process in between
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def finished_run(c: Any, experiment_id: str, config_hash: str) -> Any | None:
    """The newest FINISHED run of this config hash in the experiment, if any."""
    runs = c.search_runs(
        [experiment_id],
        filter_string=f"tags.config_hash = '{config_hash}' and attributes.status = '{FINISHED}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def run_exists(c: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        run = c.get_run(run_id)
    except MlflowException:
        return False
    return run.info.lifecycle_stage != "deleted"


def child_runs(c: Any, experiment_id: str, parent_run_id: str) -> list[Any]:
    """The job runs of the sweep whose own run is ``parent_run_id``."""
    from olmo.tracking.naming import TAG_SWEEP_RUN_ID

    return c.search_runs([experiment_id], filter_string=f"tags.{TAG_SWEEP_RUN_ID} = '{parent_run_id}'",
                         max_results=10000)
