"""python -m analysis.dashboard without a browser: which sweep it finds, the view it saves, its errors."""

from __future__ import annotations

import json
import socket

import pytest
from mlflow import MlflowClient

from analysis import dashboard, names
from analysis.synthetic import SynthRun, empty_store, log_sweep
from olmo.tracking.ui import VIEW_TAG_PREFIX, sweep_url, sweep_view_state


def grid(seeds: tuple[int, ...] = (0,)) -> list[SynthRun]:
    return [SynthRun(tags={"attention": a}, seed=s, steps=20) for a in ("mha", "gqa") for s in seeds]


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("OLMO_MLFLOW_UI_STATE", str(tmp_path / "ui-state"))
    monkeypatch.delenv("OLMO_MLFLOW_UI_URL", raising=False)
    return empty_store(str(tmp_path / "mlflow.db"))


def saved_state(c: MlflowClient, experiment_id: str, sweep_id: str) -> dict:
    tag = c.get_experiment(experiment_id).tags[f"{VIEW_TAG_PREFIX}sweep-{sweep_id}"]
    return json.loads(json.loads(tag)["state"])


def test_the_latest_sweep_is_found_and_gets_a_view_of_its_job_runs(store):
    log_sweep(store, "e", grid(), sweep_id="old")
    new = log_sweep(store, "e", grid(), sweep_id="new")
    c = MlflowClient(store)
    target = dashboard.find_sweep(c, None)
    assert (target.sweep_id, sorted(target.job_run_ids)) == ("new", sorted(new["run_ids"]))
    key = dashboard.ensure_view(c, target)
    state = saved_state(c, new["experiment_id"], "new")
    assert key == "sweep-new" and state["runsHiddenMode"] == "SHOW_ALL" and "groupBy" not in state
    assert all(run_id in state["searchFilter"] for run_id in new["run_ids"])
    assert new["parent_run_id"] not in state["searchFilter"]  # the sweep's own run draws no line


def test_a_sweep_with_several_seeds_per_config_is_grouped_by_variant(store):
    runs = grid(seeds=(1, 2))
    info = log_sweep(store, "e", runs, sweep_id="seeds")
    c = MlflowClient(store)
    for run_id, r in zip(info["run_ids"], runs, strict=True):
        c.set_tag(run_id, "variant", r.tags["attention"])
    dashboard.ensure_view(c, dashboard.find_sweep(c, "seeds"))
    group = saved_state(c, info["experiment_id"], "seeds")["groupBy"]
    assert group["groupByKeys"] == [{"mode": "tag", "groupByData": "variant"}]


def test_a_sweep_logged_with_nested_runs_still_opens(store):
    """Stores written before the flat layout: job runs nested under the sweep's run by mlflow.parentRunId."""
    info = log_sweep(store, "e", grid(), sweep_id="nested")
    c = MlflowClient(store)
    for run_id in info["run_ids"]:
        c.delete_tag(run_id, names.TAG_SWEEP_RUN_ID)
        c.set_tag(run_id, names.TAG_PARENT_RUN_ID, info["parent_run_id"])
    target = dashboard.find_sweep(c, "nested")
    assert sorted(target.job_run_ids) == sorted(info["run_ids"])


def test_an_unknown_sweep_is_one_line_naming_the_known_ones(store, capsys):
    log_sweep(store, "e", grid(), sweep_id="s1")
    assert dashboard.main(["--tracking-uri", store, "--sweep", "nope", "--no-open"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: sweep='nope'") and "'s1'" in err and "\n" not in err


def test_a_missing_store_is_an_error_not_an_empty_store(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert dashboard.main(["--tracking-uri", missing, "--no-open"]) == 2
    assert "tracking_uri=" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_a_port_in_use_is_refused_before_starting_anything(store, capsys):
    log_sweep(store, "e", grid(), sweep_id="s1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert dashboard.main(["--tracking-uri", store, "--port", str(port), "--no-open"]) == 2
    err = capsys.readouterr().err
    assert f"port={port}" in err and "no other program listens" in err


def test_the_url_opens_the_view_in_chart_mode():
    assert sweep_url("http://h:1/", "7", "sweep-x") == (
        "http://h:1/#/experiments/7/runs?viewStateShareKey=sweep-x&compareRunsMode=CHART")
    state = sweep_view_state("x")
    assert state["searchFilter"] == "tags.sweep_id = 'x' and tags.sweep_run_id LIKE '%'"
    assert state["globalLineChartConfig"] == {"xAxisKey": "metric", "selectedXAxisMetricKey": "train/pflops",
                                              "lineSmoothness": 0}
