"""Tracking against a real `mlflow server` process, and many jobs writing one sqlite store at once."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from olmo.tracking import TrackedRun, TrackingConfig, prepare_store, sqlite_uri

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 and a free port; stopped with every helper process it started."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", sqlite_uri(tmp_path / "server.db"),
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job runner: faster start
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url
    finally:
        family = [proc.pid]
        try:
            family += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the session/group this fixture started (start_new_session)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
        procs = []
        for pid in family:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=60)  # helpers exit a few seconds after the server
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=10)
        log.close()


@pytest.mark.slow
def test_a_sweep_logs_to_a_tracking_server(tmp_path, data_cache, mlflow_server):
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "train=smoke", f"results_dir={tmp_path / 'results'}",
           "pos=rope,learned"]
    env = {**os.environ, "OLMO_SWEEPS_CACHE": data_cache, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": mlflow_server}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 jobs: 2 finished" in proc.stdout
    assert not (tmp_path / "results" / "mlflow.db").exists()  # the server got everything
    c = MlflowClient(mlflow_server)
    exp = c.get_experiment_by_name("olmo-sweeps")
    runs = c.search_runs([exp.experiment_id])
    children = [r for r in runs if "sweep_run_id" in r.data.tags]
    parents = [r for r in runs if "sweep_run_id" not in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["pos"] for r in children} == {"rope", "learned"}
    for r in children:
        assert r.info.status == "FINISHED"
        loss = sorted(m.step for m in c.get_metric_history(r.info.run_id, "train/loss"))
        assert loss == sorted(m.step for m in c.get_metric_history(r.info.run_id, "train/flops")) == list(range(1, 7))
        model = {a.path for a in c.list_artifacts(r.info.run_id, "model")}
        assert "model/model.safetensors" in model  # uploaded through the server's artifact proxy
    assert (tmp_path / "server-artifacts").is_dir()


STEPS, KEYS = 150, 8


def _writer(uri: str, ready, index: int, start, queue) -> None:
    """One job's logging: STEPS optimizer steps of KEYS metrics each, a step every 2 ms (many small batches)."""
    ready.wait(timeout=120)  # the store exists (created once by the "driver")
    experiment_id = MlflowClient(uri).get_experiment_by_name("concurrency").experiment_id
    run = TrackedRun.start(uri, experiment_id, run_name=f"job{index}", tags={"job": str(index)},
                           cfg=TrackingConfig(system_metrics=False))
    run.writer.min_interval = 0.02  # many small transactions competing for the file's write lock
    start.wait(timeout=240)  # every job is ready: they all log at the same time
    for step in range(1, STEPS + 1):
        run.log_metrics({f"m/{k}": step * 100 + k for k in range(KEYS)}, step)
        time.sleep(0.002)
    run.end("FINISHED")
    queue.put((run.run_id, run.writer.errors, run.writer.retries))


@pytest.mark.slow
def test_8_jobs_writing_one_sqlite_store_at_once_lose_no_metric(tmp_path):
    uri = sqlite_uri(tmp_path / "mlflow.db")
    # fork (torch and mlflow already imported) before this process opens the store, so no connection is shared
    ctx = mp.get_context("fork")
    ready, start, queue = ctx.Event(), ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, ready, i, start, queue)) for i in range(8)]
    for p in procs:
        p.start()
    experiment_id = prepare_store(uri, "concurrency")  # created once, before the jobs use it (as the driver does)
    ready.set()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    c = MlflowClient(uri)
    print("log_batch retries per job:", [r for _, _, r in results])
    for run_id, errors, _ in results:
        assert errors == []
        assert c.get_run(run_id).info.status == "FINISHED"
        for k in (0, KEYS - 1):
            history = c.get_metric_history(run_id, f"m/{k}")
            assert sorted((m.step, m.value) for m in history) == [(s, s * 100 + k) for s in range(1, STEPS + 1)]
    assert len(c.search_runs([experiment_id])) == 8
    assert sum(len(c.get_metric_history(r, "m/1")) for r, _, _ in results) == 8 * STEPS
