"""Optuna searches (sweeps/search.py) and pruning at FLOP milestones (olmo/train/pruning.py).

The slow tests run real studies: tiny models on the `smoke` budget, a 512-token BPE in the session's data cache,
worker processes sharing one sqlite storage, MLflow child runs under the study's parent run.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from olmo.errors import OLMoConfigurationError  # noqa: E402
from olmo.train.pruning import PRUNED, FlopMilestones, OptunaPruning  # noqa: E402
from sweeps import search as S  # noqa: E402

# A tiny model (d=32, 2 layers) on the smoke budget: 6 steps, evaluations at steps 3 and 6.
TINY = ["train=smoke", "model.d_model=32", "model.n_layers=2", "model.max_sequence_length=64"]
FAST = ["heartbeat_interval=1", "grace_period=3", "poll_seconds=0.3"]


def write_search(folder: Path, name: str, **fields) -> Path:
    body = {"base": TINY, "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
            "sampler": {"name": "random"}, "n_trials": 2, **fields}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sweeps.search", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def trials_of(storage: str, study: str):
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def mlflow_children(results: Path, parent: str):
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = c.get_experiment_by_name("olmo-sweeps")
    return c, c.search_runs([exp.experiment_id], filter_string=f"tags.sweep_run_id = '{parent}'",
                            max_results=1000)


# ----- FLOP milestones and the pruning callback (no training) --------------------------------------------------
def test_milestones_are_a_log_grid_anchored_at_the_budget():
    m = FlopMilestones(1e12, per_decade=4, decades=2)
    assert m.count == 9
    assert m.flops(9) == pytest.approx(1e12) and m.flops(1) == pytest.approx(1e10)
    assert m.flops(5) == pytest.approx(1e11)
    for i in range(1, 12):
        assert m.index_at(m.flops(i)) == i  # exactly on a milestone counts as reaching it
        assert m.index_at(m.flops(i) * 0.999) == i - 1
    assert m.index_at(1e9) < 1 and m.index_at(0) == 0
    with pytest.raises(OLMoConfigurationError, match="per_decade"):
        FlopMilestones(1e12, per_decade=0)


class FakeTrial:
    def __init__(self, prune_after: int | None = None) -> None:
        self.reports: dict[int, float] = {}
        self.prune_after = prune_after

    def report(self, value: float, step: int) -> None:
        self.reports[step] = value

    def should_prune(self) -> bool:
        return self.prune_after is not None and len(self.reports) >= self.prune_after


def fake_trainer(steps: int, max_flops: float | None = None):
    stops = []
    trainer = SimpleNamespace(
        cfg=SimpleNamespace(max_flops=max_flops), state=SimpleNamespace(step=0), budget=SimpleNamespace(steps=steps),
        env=SimpleNamespace(distributed=False), request_stop=stops.append,
    )
    return trainer, stops


def test_pruning_reports_interpolated_values_at_milestones_and_stops():
    m = FlopMilestones(1000.0, per_decade=1, decades=2)  # milestones 1, 2, 3 at 10, 100, 1000 FLOPs
    trial = FakeTrial(prune_after=2)
    cb = OptunaPruning(trial, m)
    trainer, stops = fake_trainer(steps=10)
    trainer.state.step = 1
    cb.on_eval_end(trainer, {"eval/loss": 8.0, "train/flops": 20.0})  # past milestone 1: reported as is
    assert trial.reports == {1: 8.0} and not stops
    trainer.state.step = 5
    cb.on_eval_end(trainer, {"eval/loss": 6.0, "train/flops": 200.0})  # milestone 2 (100) lies between 20 and 200
    w = (math.log(100) - math.log(20)) / (math.log(200) - math.log(20))
    assert trial.reports[2] == pytest.approx(8.0 + w * (6.0 - 8.0))
    assert stops == [PRUNED] and cb.pruned_at == (2, pytest.approx(100.0))


def test_pruning_never_stops_the_last_evaluation_and_ranks_without_trial_only_listen():
    m = FlopMilestones(100.0, per_decade=1, decades=1)
    trial = FakeTrial(prune_after=1)
    cb = OptunaPruning(trial, m)
    trainer, stops = fake_trainer(steps=4, max_flops=100.0)
    trainer.state.step = 4
    cb.on_eval_end(trainer, {"eval/loss": 5.0, "train/flops": 99.0})  # a FLOP budget's last step: at the budget
    assert trial.reports == {2: 5.0} and not stops
    follower = OptunaPruning(None, m)
    follower.on_eval_end(trainer, {"eval/loss": 5.0, "train/flops": 99.0})
    assert follower.reports == {2: 5.0} and not stops


# ----- the search file and the command line -------------------------------------------------------------------
def test_overrides_are_written_as_hydra_reads_them():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in (1e-4, 0.003, 3, True, None, "gqa", "a b", "1e-3", "x'y", 2.5e-12, 5e11, 1.25e13, 123456.7, -3e6):
        parsed = parser.parse_override(f"k={S.format_value(value)}")
        assert parsed.value() == value and type(parsed.value()) is type(value), (value, S.format_value(value))
    assert S.format_value(5e11) == "5e11" and S.format_value(0.003) == "0.003"


def bad_search(tmp_path: Path, **fields) -> str:
    path = write_search(tmp_path, "bad", **fields)
    with pytest.raises(OLMoConfigurationError) as e:
        spec = S.load_search(str(path), [f"results_dir={tmp_path / 'results'}"])
        S.prepare(spec, dry_run=True)
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"optim.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}, "Key 'lrr' not in 'OptimConfig'"),
        ({"nope": [1, 2]}, "Key 'nope' not in 'RunConfig'"),
        ({"optim.lr": {"type": "float", "low": 1e-2, "high": 1e-2}}, "the range is empty"),
        ({"optim.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}, "the range is empty"),
        ({"optim.lr": {"type": "normal", "low": 0, "high": 1}}, "space.optim.lr.type='normal'"),
        ({"optim.lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}, "with log: true"),
        ({"optim.lr": {"type": "float", "low": 1e-4}}, "space.optim.lr.high=None"),
        ({"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "mean": 3}}, "space.optim.lr.mean"),
        ({"optim.lr": []}, "a non-empty list"),
        ({"attention": ["mha", "foo"]}, "Could not find 'attention/foo'; options: gqa, mha, mqa"),
        ({"scheduler.warmup_steps": {"type": "float", "low": 0.5, "high": 3}}, "could not be converted to Integer"),
        ({"optim.lr": {"type": "float", "low": -1.0, "high": 1e-2}}, "optim.lr=-1.0 is invalid"),
        ({"attention": {"type": "int", "low": 1, "high": 3}}, "is a config group"),
        ({}, "space={} is invalid"),
    ],
)
def test_a_bad_space_fails_in_one_line_before_anything_starts(tmp_path, space, expected):
    assert expected in bad_search(tmp_path, space=space)
    assert not (tmp_path / "results").exists()


def test_bad_settings_fail_in_one_line(tmp_path):
    assert "sampler='cmaes'" in bad_search(tmp_path, sampler="cmaes")
    assert "sampler.n_startup=3" in bad_search(tmp_path, sampler={"name": "tpe", "n_startup": 3})
    assert "enqueue[0].optim.lr=0.5" in bad_search(tmp_path, enqueue=[{"optim.lr": 0.5}])
    assert "enqueue[0].warmup" in bad_search(tmp_path, enqueue=[{"warmup": 3}])
    assert "workers=0" in bad_search(tmp_path, workers=0)
    assert "objective.direction='down'" in bad_search(tmp_path, objective={"direction": "down"})
    assert "the base config" in bad_search(tmp_path, base=[*TINY, "model.n_heads=5"])
    assert "colour" in bad_search(tmp_path, colour="blue")


def test_the_command_line_fails_with_one_line_and_creates_no_storage(tmp_path):
    path = write_search(tmp_path, "bad", space={"optim.lrr": [1e-3, 2e-3]})
    proc = run_cli([f"search={path}", f"results_dir={tmp_path / 'results'}"], cwd=tmp_path, timeout=120)
    assert proc.returncode == S.EXIT_BAD_CONFIG, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "space.optim.lrr=0.001" in lines[0] and "Key 'lrr' not in 'OptimConfig'" in lines[0]
    assert not (tmp_path / "results").exists()


def test_study_name_follows_the_question_not_the_execution(tmp_path):
    path = write_search(tmp_path, "q")
    a = S.load_search(str(path), ["workers=3", "n_trials=9", "data.cache_dir=/x", "results_dir=/y"])
    b = S.load_search(str(path), ["launcher=submitit_local"])
    c = S.load_search(str(path), ["model.d_model=64"])
    assert a.study_name == b.study_name != c.study_name
    assert S.load_search(str(path), ["study=mine"]).study_name == "mine"
    g = S.load_search(str(write_search(tmp_path, "g", space={"optim.lr": [1e-3, 2e-3], "attention": ["mha", "gqa"]},
                                       sampler="grid", n_trials=100)))
    assert g.n_trials == 4  # the whole grid once


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::optuna.exceptions.ExperimentalWarning")
def test_a_dead_workers_trial_is_retried_through_heartbeats(tmp_path):
    spec = S.build_search({"space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2}},
                           "heartbeat_interval": 1, "grace_period": 2}, "hb", "hb.yaml")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="hb", storage=S.open_storage(url, spec, create=True))
    trial = study.ask()
    trial.suggest_float("optim.lr", 1e-3, 1e-2)
    trial.set_user_attr("worker", "w0-dead")
    trial.set_user_attr("note", "kept")
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)  # the worker died: no heartbeat for longer than the grace period (sqlite counts in seconds)
    worker_study = optuna.load_study(study_name="hb", storage=S.open_storage(url, spec))
    S.fail_stale(worker_study)
    trials = worker_study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    retry = trials[1]
    assert retry.params == trials[0].params and retry.system_attrs[S.RETRY_OF] == 0
    assert optuna.storages.RetryFailedTrialCallback.retried_trial_number(retry) == 0
    assert retry.user_attrs == {"note": "kept"}  # the dead worker's own attributes are not carried over
    assert S.progress(worker_study).slots == 1 and S.progress(worker_study).pending(1) == 1


def test_list_and_dry_run(tmp_path, capsys):
    assert S.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("lr_warmup", "lr_width", "optimizer"))
    for name in S.available_searches():  # every shipped search composes and validates
        assert S.main([f"search={name}", "--dry-run", f"results_dir={tmp_path}"]) == 0
        plan = yaml.safe_load(capsys.readouterr().out)
        assert plan["study"].startswith(f"{name}-") and plan["budget_flops"] > 0
    assert not any(tmp_path.iterdir())  # a dry run creates nothing


def test_an_inline_grid_study_on_a_journal_file_without_mlflow(tmp_path, data_cache, one_torch_thread):
    path = write_search(tmp_path, "grid", space={"optim.lr": [3e-3, 1e-2], "train.seed": {"type": "int", "low": 0,
                                                                                          "high": 1}},
                        sampler="grid", pruner="hyperband", n_trials=3)
    results = tmp_path / "results"
    spec = S.load_search(str(path), ["launcher=inline", "storage=journal:" + str(results / "study.journal"),
                                     "tracking.enabled=false", f"data.cache_dir={data_cache}",
                                     f"results_dir={results}"])
    assert spec.n_trials == 3  # at most the grid's 4 points
    result = S.run_search(spec)
    assert result.status == "finished" and result.parent_run_id is None
    trials = optuna.load_study(study_name=result.study, storage=S.open_storage(result.storage, spec)).trials
    assert len(trials) == 3 and len({tuple(t.params.values()) for t in trials}) == 3  # distinct grid points
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials) and result.progress.complete >= 1
    assert not (results / "mlflow.db").exists()
    best = yaml.safe_load((Path(result.study_dir) / S.BEST_FILE).read_text())
    assert best["params"] == result.best_params and best["value"] == result.best_value


# ----- real studies ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """One results folder (one MLflow store, one Optuna sqlite file) for the studies of this module."""
    return tmp_path_factory.mktemp("search-results")


@pytest.mark.slow
def test_a_study_on_two_workers_prunes_the_bad_region_and_resumes(tmp_path, results, data_cache):
    bad, good = 10.0, 3e-3
    path = write_search(
        tmp_path, "lr", n_trials=8,
        space={"optim.lr": {"type": "float", "low": 1e-3, "high": 10.0, "log": True}, "attention": ["mha", "gqa"]},
        sampler={"name": "tpe", "n_startup_trials": 4, "seed": 1}, pruner={"name": "median", "n_startup_trials": 2},
        # Two good baselines finish first (one per worker); the two bad ones start after them and meet the pruner.
        enqueue=[{"optim.lr": good, "attention": "mha"}, {"optim.lr": good, "attention": "gqa"},
                 {"optim.lr": bad, "attention": "mha"}, {"optim.lr": bad, "attention": "gqa"}],
    )
    common = [f"search={path}", f"results_dir={results}", f"data.cache_dir={data_cache}", *FAST]
    start = time.time()
    proc = run_cli([*common, "workers=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    first_run = time.time() - start
    plan = S.Plan.read(next((results / "searches").glob("lr-*")) / S.PLAN_FILE)
    trials = trials_of(plan.storage, plan.study)
    assert len(trials) == 8 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials), \
        [(t.number, t.state.name, t.user_attrs.get("error")) for t in trials]
    # Both workers ran trials (a worker the driver replaced on a busy machine adds a third name).
    assert len({t.user_attrs["worker"] for t in trials}) >= 2
    # ... and never the same one: the enqueued trials wait in sqlite, which two workers asking at once both got
    started = re.findall(r"\] trial (\d+): ", "".join(p.read_text() for p in Path(plan.study_dir).glob("workers/*")))
    assert sorted(map(int, started)) == list(range(8)), started
    for t in trials[:2]:
        assert t.state.name == "COMPLETE" and t.params["optim.lr"] == good
    for t in trials[2:4]:  # the learning rate of 10 is stopped at the first milestone past step 3 of 6
        assert t.params["optim.lr"] == bad and t.state.name == "PRUNED", (t.number, t.state, t.intermediate_values)
        assert list(t.intermediate_values) == [t.user_attrs["pruned_at_milestone"]]

    # Every trial is one MLflow child run of the study's parent run, tagged with its number and parameters.
    c, children = mlflow_children(results, plan.parent_run_id)
    by_number = {int(r.data.tags["optuna.trial"]): r for r in children}
    assert sorted(by_number) == list(range(8))
    for t in trials:
        run = by_number[t.number]
        assert run.data.tags["optuna.state"] == t.state.name
        assert run.data.tags["optuna.param.optim.lr"] == S.format_value(t.params["optim.lr"])
        assert run.data.tags["attention"] == t.params["attention"]  # what was trained, from the model config
        assert run.info.status == ("FINISHED" if t.state.name == "COMPLETE" else "KILLED")
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        steps = max(m.step for m in c.get_metric_history(run.info.run_id, "train/loss"))
        assert steps == (6 if t.state.name == "COMPLETE" else 3)
    assert c.get_run(plan.parent_run_id).info.status == "FINISHED"
    assert not any((Path(plan.study_dir) / "trials").iterdir())  # trial checkpoints are removed

    # The best trial as a run.py override line and a YAML file: the same config (hash) as the best trial's run.
    best = yaml.safe_load((Path(plan.study_dir) / S.BEST_FILE).read_text())
    line = (Path(plan.study_dir) / S.BEST_LINE_FILE).read_text().split()
    assert best["overrides"] == line and best["command"] == "python run.py " + " ".join(line)
    assert f"optim.lr={S.format_value(best['params']['optim.lr'])}" in line and best["value"] < 7
    from olmo.tracking import config_hash

    with S.hydra_context():
        composed = S.to_experiment(S.compose(line), 1)
    assert config_hash(composed.experiment) == c.get_run(best["mlflow_run_id"]).data.tags["config_hash"]
    assert "reproduce: python run.py" in proc.stdout

    # The same command again with more trials continues the same study and parent run, here as one submitit job
    # whose trials run on 2 ranks (rank 0 asks Optuna and broadcasts the trial and each pruning decision).
    proc = run_cli([*common, "n_trials=10", "workers=1", "launcher=submitit_local", "ranks=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"study {plan.study}" in proc.stdout
    trials = trials_of(plan.storage, plan.study)
    assert len(trials) == 10 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    _, children = mlflow_children(results, plan.parent_run_id)
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == list(range(10))
    assert {r.data.tags["world_size"] for r in children if int(r.data.tags["optuna.trial"]) >= 8} == {"2"}
    print(f"first run {first_run:.0f}s")


@pytest.mark.slow
def test_a_worker_killed_mid_trial_gets_its_trial_retried(tmp_path, results, data_cache):
    # 100 steps: seconds of training after the first milestone, for the test to find the trial RUNNING and kill it
    # (at 40 steps a quiet machine finished the trial between two polls)
    path = write_search(tmp_path, "kill", n_trials=1, base=[*TINY, "train.max_steps=100", "train.eval_interval=10"],
                        sampler={"name": "random", "seed": 3})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sweeps.search", f"search={path}", f"results_dir={results}",
           f"data.cache_dir={data_cache}", "workers=1", *FAST]
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        victim = None
        deadline = time.time() + 240
        while victim is None and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
            plans = list((results / "searches").glob("kill-*/" + S.PLAN_FILE))
            if not plans:
                continue
            plan = S.Plan.read(plans[0])
            for t in trials_of(plan.storage, plan.study):
                if t.state.name == "RUNNING" and t.intermediate_values and "pid" in t.user_attrs:
                    victim = t  # training, past its first milestone
        assert victim is not None, driver.communicate()[0][-5000:] if driver.poll() is not None else "no trial ran"
        os.kill(victim.user_attrs["pid"], signal.SIGKILL)
        out, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out[-5000:]
    trials = trials_of(plan.storage, plan.study)
    killed = trials[victim.number]
    assert killed.state.name == "FAIL" and "died" in killed.user_attrs["error"]
    retries = [t for t in trials if t.system_attrs.get(S.RETRY_OF) == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params and retries[0].state.name == "COMPLETE"
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    c, children = mlflow_children(results, plan.parent_run_id)
    status = {int(r.data.tags["optuna.trial"]): r.info.status for r in children}
    assert status[victim.number] == "FAILED" and status[retries[0].number] == "FINISHED"
    assert "1 complete, 0 pruned, 1 failed (1 retried)" in out


# ----- many workers asking at once ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("store", ["sqlite", "journal"])
def test_racing_workers_create_exactly_n_trials_and_never_share_one(tmp_path, store):
    from tests.ask_race import race_asks

    url = f"sqlite:///{tmp_path / 'optuna.db'}" if store == "sqlite" else f"journal:{tmp_path / 'optuna.log'}"
    trials, taken = race_asks(url, "race", n_trials=5, workers=6, lock_file=tmp_path / "ask.lock", enqueued=2)
    assert len(trials) == 5, [(t.number, t.state.name) for t in trials]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sum(taken) == 5  # each trial was taken by one worker: the two enqueued ones were not run twice
