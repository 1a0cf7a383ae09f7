"""What the MLflow UI shows of a sweep: the experiment marked as model training, and a saved view per sweep.

A saved view is an experiment tag ``mlflow.sharedViewState.<key>`` that MLflow's UI (3.x) opens from the URL
``#/experiments/<id>/runs?viewStateShareKey=<key>`` (its "Share" button writes the same tag): the sweep's job runs
only, all visible (MLflow hides all but the first 10 by default), the chart view filtered to the loss charts with
``train/pflops`` on the x-axis, and the seeds of one variant grouped (mean and min-max band) when the sweep ran
several seeds. The format is MLflow's own (checked in a real browser by tests/test_browser_dashboard.py).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from olmo.tracking.naming import TAG_SWEEP_RUN_ID

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# "Model training" in the UI: opening the experiment shows its training runs, not the GenAI overview (traces).
MODEL_TRAINING = "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
TAG_VARIANT = "variant"  # the run name without the seed: what the chart groups the seeds of one config by
TAG_RUN_COLOR = "mlflow.runColor"  # the UI's line colour of a run (it otherwise hashes the run id: often alike)
# matplotlib's tab10: distinct colours for the first 10 jobs of a sweep (then they repeat)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
X_AXIS_METRIC = "train/pflops"
CHARTS_FILTER = "loss"  # the chart view opens on the loss charts (eval/loss, train/loss)


def mark_model_training(c: Any, experiment_id: str) -> None:
    """Tag the experiment as model training, unless someone chose another kind in the UI."""
    exp = c.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in exp.tags:
        c.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def job_color(num: int) -> str:
    """The line colour of the sweep's job ``num`` in the UI's charts."""
    return PALETTE[num % len(PALETTE)]


def view_key(sweep_id: str) -> str:
    return f"sweep-{sweep_id}"


def sweep_view_state(sweep_id: str, run_ids: Sequence[str] | None = None, group_seeds: bool = False) -> dict:
    """The UI state of the sweep's view. ``run_ids``: exactly these runs (a sweep that skipped jobs finished by
    an earlier sweep shows their runs too); else the runs tagged with the sweep id, less the sweep's own run."""
    if run_ids:
        search = "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")"
    else:
        search = f"tags.sweep_id = '{sweep_id}' and tags.{TAG_SWEEP_RUN_ID} LIKE '%'"
    state: dict[str, Any] = {
        "searchFilter": search,
        "orderByKey": "attributes.start_time",
        "orderByAsc": True,
        "runsHiddenMode": "SHOW_ALL",
        "globalLineChartConfig": {"xAxisKey": "metric", "selectedXAxisMetricKey": X_AXIS_METRIC,
                                  "lineSmoothness": 0},
        "chartsSearchFilter": CHARTS_FILTER,
        "hideEmptyCharts": True,
    }
    if group_seeds:
        state["groupBy"] = {"aggregateFunction": "average",
                            "groupByKeys": [{"mode": "tag", "groupByData": TAG_VARIANT}]}
        state["useGroupedValuesInCharts"] = True
    return state


def save_sweep_view(c: Any, experiment_id: str, sweep_id: str, run_ids: Sequence[str] | None = None,
                    group_seeds: bool = False) -> str:
    """Write (or rewrite) the sweep's saved view on its experiment; returns the view's key."""
    key = view_key(sweep_id)
    now = int(time.time() * 1000)
    tag = VIEW_TAG_PREFIX + key
    old = c.get_experiment(experiment_id).tags.get(tag)
    created = now
    if old:
        try:
            created = int(json.loads(old).get("createdAt", now))
        except (ValueError, AttributeError):
            pass
    envelope = {"name": f"sweep {sweep_id}", "createdAt": created, "updatedAt": now,
                "state": json.dumps(sweep_view_state(sweep_id, run_ids, group_seeds))}
    c.set_experiment_tag(experiment_id, tag, json.dumps(envelope))
    return key


def sweep_url(base_url: str, experiment_id: str, key: str) -> str:
    """The page of the sweep's runs in chart view, in the MLflow UI at ``base_url``."""
    query = urllib.parse.urlencode({"viewStateShareKey": key, "compareRunsMode": "CHART"})
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"
