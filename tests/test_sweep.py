"""run.py end to end: real Hydra multiruns in subprocesses, writing a real sqlite MLflow store in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from olmo.tracking import sqlite_uri

ROOT = Path(__file__).resolve().parents[1]


def run_py(tmp_path: Path, cache: str, *args: str, multirun: bool = True, env: dict | None = None,
           timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "run.py"), *(["-m"] if multirun else []), "train=smoke",
           f"results_dir={tmp_path / 'results'}", *args]
    full_env = {**os.environ, "OLMO_SWEEPS_CACHE": cache, "OMP_NUM_THREADS": "1", **(env or {})}
    if "MLFLOW_TRACKING_URI" not in (env or {}):
        full_env.pop("MLFLOW_TRACKING_URI", None)  # the default store under results_dir
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=full_env)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def store(tmp_path: Path) -> MlflowClient:
    return MlflowClient(sqlite_uri(tmp_path / "results" / "mlflow.db"))


def runs_of(client: MlflowClient) -> tuple[list, list]:
    """(sweep runs, job runs) of the default experiment: job runs name their sweep's run in a tag, and are not
    nested under it (MLflow's UI would hide them until the sweep's run is expanded)."""
    exp = client.get_experiment_by_name("olmo-sweeps")
    runs = client.search_runs([exp.experiment_id])
    assert not any("mlflow.parentRunId" in r.data.tags for r in runs)
    parents = [r for r in runs if "sweep_run_id" not in r.data.tags]
    children = [r for r in runs if "sweep_run_id" in r.data.tags]
    return parents, children


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_a_2x2_grid_gives_4_finished_children_of_one_parent_and_a_rerun_skips_them(tmp_path, data_cache):
    proc = ok(run_py(tmp_path, data_cache, "attention=gqa,mqa", "pos=rope,alibi"))
    assert "4 jobs: 4 finished" in proc.stdout
    c = store(tmp_path)
    parents, children = runs_of(c)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["n_jobs"] == "4"
    assert {r.data.tags["sweep_run_id"] for r in children} == {parent.info.run_id}
    assert {(r.data.tags["attention"], r.data.tags["pos"]) for r in children} == {
        ("gqa", "rope"), ("gqa", "alibi"), ("mqa", "rope"), ("mqa", "alibi")}
    assert len({r.data.tags["config_hash"] for r in children}) == 4
    for r in children:
        t, p = r.data.tags, r.data.params
        assert r.info.status == "FINISHED"
        assert t["sweep_id"] == parent.data.tags["sweep_id"]
        assert (t["model"], t["train"], t["launcher"], t["world_size"], t["norm"]) == (
            "tiny", "smoke", "basic", "1", "layernorm")
        assert t["git_commit"] and r.info.run_name == f"{t['attention']}-{t['pos']}-s{p['train.seed']}"
        assert t["variant"] == f"{t['attention']}-{t['pos']}"
        assert p["model.n_kv_heads"] == {"gqa": "2", "mqa": "1"}[t["attention"]]
        assert p["model.positional"] == t["pos"] and p["model.d_model"] == "128"
        assert p["data.tokenizer.vocab_size"] == "512" and p["train.max_steps"] == "6"
        loss_steps = steps(c, r.info.run_id, "train/loss")
        assert loss_steps == list(range(1, 7))
        assert steps(c, r.info.run_id, "train/flops") == loss_steps == steps(c, r.info.run_id, "train/tokens")
        assert steps(c, r.info.run_id, "eval/loss") == [3, 6]
        assert {"config.yaml", "model"} <= {a.path for a in c.list_artifacts(r.info.run_id)}
        save_folder = Path(p["train.save_folder"])
        assert save_folder.parent == tmp_path / "results" / "checkpoints" / "olmo-sweeps"
        assert save_folder.name == t["config_hash"] and (save_folder / "final").is_dir()

        assert steps(c, r.info.run_id, "train/pflops") == loss_steps
        assert c.get_metric_history(r.info.run_id, "train/pflops")[-1].value == pytest.approx(
            c.get_metric_history(r.info.run_id, "train/flops")[-1].value / 1e15)
    exp = c.get_experiment_by_name("olmo-sweeps")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    sweep_id = parent.data.tags["sweep_id"]
    assert f"dashboard: python -m analysis.dashboard --sweep {sweep_id}" in proc.stdout
    assert f"#/experiments/{exp.experiment_id}/runs?viewStateShareKey=sweep-{sweep_id}" in proc.stdout
    assert view_run_ids(c, sweep_id) == {r.info.run_id for r in children}  # the saved view lists the sweep's runs

    again = ok(run_py(tmp_path, data_cache, "attention=gqa,mqa", "pos=rope,alibi"))
    assert "4 jobs: 4 skipped" in again.stdout
    parents, children_after = runs_of(c)
    assert len(parents) == 2 and len(children_after) == 4  # no new child run
    # the second sweep's view shows the runs of the first, whose configs it skipped
    second = next(r for r in parents if r.info.run_id != parent.info.run_id).data.tags["sweep_id"]
    assert view_run_ids(c, second) == {r.info.run_id for r in children}


def view_run_ids(c: MlflowClient, sweep_id: str) -> set[str]:
    """The run ids that the sweep's saved MLflow UI view filters on."""
    import json
    import re

    exp = c.get_experiment_by_name("olmo-sweeps")
    state = json.loads(json.loads(exp.tags[f"mlflow.sharedViewState.sweep-{sweep_id}"])["state"])
    assert state["globalLineChartConfig"]["selectedXAxisMetricKey"] == "train/pflops"
    return set(re.findall(r"'([0-9a-f]{32})'", state["searchFilter"]))


@pytest.mark.slow
def test_a_failing_job_is_failed_in_mlflow_the_others_go_on_and_the_sweep_exits_non_zero(tmp_path, data_cache):
    proc = run_py(tmp_path, data_cache, "optim.lr=1e9,1e-3", "train.grad_clip=null")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 jobs: 1 FAILED, 1 finished" in proc.stdout
    assert "NonFiniteLossError" in proc.stdout and "1 of 2 jobs failed" in proc.stderr
    c = store(tmp_path)
    parents, children = runs_of(c)
    assert parents[0].info.status == "FAILED" and parents[0].data.tags["n_failed"] == "1"
    by_status = {r.info.status: r for r in children}
    assert set(by_status) == {"FAILED", "FINISHED"}
    assert by_status["FAILED"].data.tags["error"].startswith("NonFiniteLossError: non-finite loss")
    assert by_status["FAILED"].data.params["optim.lr"] == "1000000000.0"
    assert "summary.txt" in {a.path for a in c.list_artifacts(parents[0].info.run_id)}


def validate(*sweep: str):
    """The driver's validation pass over a multirun of ``sweep`` (in-process: Hydra's compose API)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from sweeps.driver import validate_sweep

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["train=smoke"], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = ["train=smoke", *sweep]
        return validate_sweep(cfg)


@pytest.mark.parametrize(
    "args, message",
    [
        (["attention=mha,foo"], "job #1 (attention=foo): In 'config': Could not find 'attention/foo'; "
                                "options of 'attention': gqa, mha, mqa"),
        (["model.d_model=64,abc"], "job #1 (model.d_model=abc): Error merging override model.d_model=abc; "
                                   "Value 'abc' of type 'str' could not be converted to Integer"),
        (["model.n_kv_heads=2,3"], "job #1 (model.n_kv_heads=3): model.n_kv_heads=3 is invalid; allowed: a divisor of "
                                   "n_heads=4"),
        (["attention=mha,gqa", "model.n_heads=3"], "model.d_model=128 is invalid; allowed: a multiple of n_heads=3"),
        (["model.d_modle=64,32"], "Key 'd_modle' not in 'ModelConfig'"),
        (["train.max_steps=null,4"], "set exactly one of max_steps, max_tokens, max_flops"),
        (["train.max_steps=null", "train.max_flops=1e3,1e12"],
         "job #0 (train.max_flops=1000.0): train.max_flops=1e+03 is less than one step"),
        (["attention=mha,gqa", "model.n_kv_heads=4"], "job #1 (attention=gqa) trains the same config as job #0"),
    ],
)
def test_the_driver_validates_every_job_of_a_sweep(args, message):
    from sweeps.driver import SweepConfigError

    with pytest.raises(SweepConfigError) as e:
        validate(*args)
    assert message in str(e.value)


def test_a_valid_sweep_validates_with_distinct_hashes():
    jobs, swept, first = validate("attention=mha,gqa,mqa", "pos=rope,alibi")
    assert len(jobs) == 6 and swept == ["attention", "pos"]
    assert len({j.config_hash for j in jobs}) == 6
    assert first.experiment.model.n_kv_heads is None and first.experiment.train.max_steps == 6


def test_a_bad_sweep_fails_before_any_job_starts(tmp_path, data_cache):
    proc = run_py(tmp_path, data_cache, "pos=rope,alibi", "model.n_kv_heads=2,3")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-3:] == [
        "Error: 2 of 4 jobs have a bad config; no job was started:",
        "  job #1 (pos=rope model.n_kv_heads=3): model.n_kv_heads=3 is invalid; allowed: a divisor of n_heads=4 "
        "(or None)",
        "  job #3 (pos=alibi model.n_kv_heads=3): model.n_kv_heads=3 is invalid; allowed: a divisor of n_heads=4 "
        "(or None)",
    ]
    assert not (tmp_path / "results" / "mlflow.db").exists()  # nothing was launched, no store written
    assert not (tmp_path / "results" / "multirun").exists()


def test_a_single_run_with_a_bad_value_fails_with_one_line(tmp_path, data_cache):
    proc = run_py(tmp_path, data_cache, "model.n_kv_heads=3", multirun=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "Error: model.n_kv_heads=3 is invalid; allowed: a divisor of n_heads=4 (or None)")


def test_every_sweep_preset_composes_into_a_valid_multirun(tmp_path):
    from hydra import compose, initialize_config_dir

    from sweeps.driver import sweep_jobs
    from sweeps.schema import sweep_presets

    presets = sweep_presets()
    assert {"attention", "positional", "norm", "activation", "init", "block", "architecture", "seeds"} <= set(presets)
    expected = {"attention": 3, "positional": 4, "norm": 3, "activation": 3, "init": 5, "block": 3, "seeds": 3,
                "architecture": 324}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name in presets:
            cfg = compose("config", overrides=[f"+sweep={name}", "train=smoke"], return_hydra_config=True)
            assert cfg.hydra.mode.name == "MULTIRUN"
            jobs, swept = sweep_jobs(cfg)
            if name in expected:
                assert len(jobs) == expected[name], name
            assert swept and all(f"+sweep={name}" in j.overrides for j in jobs)


def test_every_option_of_every_config_group_composes_and_validates():
    """Each conf/<group>/<option>.yaml on top of the defaults gives a valid ExperimentConfig."""
    from hydra import compose, initialize_config_dir

    from sweeps.driver import check_experiment
    from sweeps.schema import to_configs

    groups = sorted(p for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "hydra")
    assert {g.name for g in groups} >= {"attention", "pos", "norm", "activation", "init", "block", "kernel",
                                        "model", "data", "optim", "scheduler", "train", "distributed"}
    checked = 0
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for group in groups:
            for option in sorted(p.stem for p in group.glob("*.yaml")):
                overrides = [f"{group.name}={option}"]
                if group.name == "data" and option != "shakespeare":
                    overrides.append("data.paths=[corpus.txt]")
                    overrides += ["data.eos_token_id=0"] if option == "memmap" else []
                composed = to_configs(compose("config", overrides=overrides), "/tmp")
                check_experiment(composed.experiment, world_size=1)
                checked += 1
    assert checked >= 50
    # the presets say what they say
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        one_b = to_configs(compose("config", overrides=["model=1b", "train=flops_1e19"]), "/tmp").experiment
        assert (one_b.model.d_model, one_b.model.n_layers, one_b.model.n_heads) == (2048, 16, 16)
        assert one_b.model.attention_dropout == one_b.model.residual_dropout == one_b.model.embedding_dropout == 0
        assert one_b.train.seq_len == 2048 and one_b.train.max_flops == 1e19 and one_b.train.max_steps is None
        gqa = to_configs(compose("config", overrides=["attention=gqa", "model=small"]), "/tmp").experiment
        assert (gqa.model.n_heads, gqa.model.n_kv_heads) == (8, 4)
        default = to_configs(compose("config"), "/tmp")
        assert (default.experiment.model.d_model, default.experiment.train.max_steps) == (128, 300)
        assert default.experiment.data.source == "shakespeare" and default.tracking.enabled
        assert default.threads == 1
