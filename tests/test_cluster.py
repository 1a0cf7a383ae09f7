"""The cluster path on real engines: run.py's sweeps as SLURM jobs (hydra/launcher=submitit_slurm) on the one-node
cluster of scripts/local_cluster.sh, MLflow on a tracking server with a PostgreSQL backend store, Optuna studies
on PostgreSQL.

scripts/test.sh starts the cluster before pytest and stops it after; by hand:

    bash scripts/local_cluster.sh start     # as root; then
    .venv/bin/pytest -m cluster tests/test_cluster.py

Without a running cluster the tests skip (fail under CI=true: CI must run them). They find the cluster through
$SLURM_CONF / $OLMO_MLFLOW_SERVER / $OLMO_PG_*_URL, else through the `env` file in its state folder
($OLMO_CLUSTER_DIR, default /tmp/olmo-cluster). Jobs run as root on this machine, so the tmp folders of the tests
are theirs too; every sweep writes to its own MLflow experiment (a fresh name), so reruns never skip a job as
"already finished".

To hold a running job at a known point, a test stops its training process (SIGSTOP) once MLflow shows it
training, lets SLURM signal it (scancel --signal, or the time limit's warning signal), and continues it
(SIGCONT): the signal then always lands mid-training, however fast the machine is.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
ENV_KEYS = ("OLMO_CLUSTER_DIR", "SLURM_CONF", "OLMO_MLFLOW_SERVER", "OLMO_PG_MLFLOW_URL", "OLMO_PG_OPTUNA_URL")
START_HINT = "start it with: sudo bash scripts/local_cluster.sh start"
# The launcher presets on the CPU node of the local cluster: the GPU preset conf/hydra/launcher/submitit_slurm.yaml
# with CPU_NODE, or the CPU preset submitit_slurm_cpu.yaml with CPU_PRESET.
CPU_PRESET = ("hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=20")
CPU_NODE = (
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.timeout_min=20",
)
# Tiny jobs: the smoke budget (6 steps, a 512-token BPE) on a 2-layer model.
SMALL = ("train=smoke", "model.d_model=64", "model.n_layers=2")


# ----- the cluster --------------------------------------------------------------------------------------------
@dataclass
class Cluster:
    env: dict[str, str]  # for subprocesses: the cluster's variables, the MLflow server, the shared data cache
    mlflow_uri: str
    pg_mlflow_url: str
    pg_optuna_url: str
    job_names: list[str] = field(default_factory=list)  # SLURM job names used by the tests (cancelled at the end)
    drivers: list[subprocess.Popen] = field(default_factory=list)  # sweep processes (killed if a test leaves one)
    background: list[subprocess.Popen] = field(default_factory=list)  # sweeps that outlive a test (module scope)

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(self.mlflow_uri)

    def slurm(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def job_name(self, what: str) -> str:
        name = f"olmo-test-{what}-{uuid.uuid4().hex[:8]}"
        self.job_names.append(name)
        return name


def _cluster_variables() -> dict[str, str]:
    """The variables of `local_cluster.sh env` (its state folder's env file); the caller's environment wins."""
    found: dict[str, str] = {}
    env_file = Path(os.environ.get("OLMO_CLUSTER_DIR", "/tmp/olmo-cluster")) / "env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            m = re.fullmatch(r"export (\w+)=(.*)", line.strip())
            if m:
                found[m[1]] = m[2]
    found.update({k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)})
    return found


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the local cluster is not running under CI ({reason}); scripts/test.sh must start it")
    pytest.skip(f"the local SLURM/PostgreSQL cluster is not running ({reason}); {START_HINT}")


def _probe(variables: dict[str, str]) -> str | None:
    """Why the cluster cannot be used, or None."""
    missing = [k for k in ENV_KEYS[1:] if not variables.get(k)]
    if missing:
        where = Path(os.environ.get("OLMO_CLUSTER_DIR", "/tmp/olmo-cluster")) / "env"
        return f"{', '.join(missing)} not set and not in {where}"
    env = {**os.environ, **variables}
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo: {e}"
    if out.returncode != 0 or not re.search(r"idle|mixed|allocated|completing", out.stdout):
        return f"sinfo: {(out.stderr or out.stdout).strip()[:200] or 'no node up'}"
    import urllib.request

    try:
        urllib.request.urlopen(variables["OLMO_MLFLOW_SERVER"] + "/health", timeout=10).read()
    except OSError as e:
        return f"MLflow server {variables['OLMO_MLFLOW_SERVER']}: {e}"
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[cluster]')"
    for key in ("OLMO_PG_MLFLOW_URL", "OLMO_PG_OPTUNA_URL"):
        try:
            psycopg2.connect(variables[key].replace("+psycopg2", ""), connect_timeout=10).close()
        except psycopg2.Error as e:
            return f"PostgreSQL ({key}): {str(e).strip()}"
    return None


@pytest.fixture(scope="module")
def cluster(data_cache: str) -> Iterator[Cluster]:
    variables = _cluster_variables()
    reason = _probe(variables)
    if reason is not None:
        _unavailable(reason)
    env = {
        **os.environ,
        **variables,
        "MLFLOW_TRACKING_URI": variables["OLMO_MLFLOW_SERVER"],
        "OLMO_SWEEPS_CACHE": data_cache,  # Shakespeare is tokenized once for every job of the session
        "OMP_NUM_THREADS": "1",  # tiny models; the jobs share 2 cores
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    c = Cluster(env, variables["OLMO_MLFLOW_SERVER"], variables["OLMO_PG_MLFLOW_URL"],
                variables["OLMO_PG_OPTUNA_URL"])
    yield c
    for proc in c.drivers + c.background:  # nothing of these tests outlives them
        _kill(proc)
    for name in c.job_names:
        c.slurm("scancel", f"--name={name}", check=False)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(autouse=True)
def _no_driver_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that fails while its sweep runs leaves neither the sweep's driver waiting nor its jobs running."""
    if "cluster" not in request.fixturenames:
        yield
        return
    cluster = request.getfixturevalue("cluster")
    drivers, names = len(cluster.drivers), len(cluster.job_names)
    yield
    for proc in cluster.drivers[drivers:]:
        _kill(proc)
    for name in cluster.job_names[names:]:
        cluster.slurm("scancel", f"--name={name}", check=False)


# ----- sweeps ----------------------------------------------------------------------------------------------------
@dataclass
class Sweep:
    proc: subprocess.Popen
    results: Path
    experiment: str
    job_name: str
    log: Path

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the sweep did not end within {timeout:.0f}s\n{self.diagnosis()}") from None
        return rc, self.log.read_text()

    def diagnosis(self) -> str:
        """The sweep's output and its jobs' logs (their ends), for failure messages."""
        parts = [f"--- sweep output ({self.log}):\n" + _tail(self.log.read_text(), 3000)]
        for path in sorted(self.results.rglob(".submitit/*/*_log.*")):
            text = _drop_noise(path.read_text(errors="replace"))
            if text.strip():
                parts.append(f"--- {path.relative_to(self.results)}:\n{_tail(text, 2000)}")
        return "\n".join(parts)


def _tail(text: str, chars: int) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


def _drop_noise(text: str) -> str:
    """Without submitit's warnings that sacct cannot answer (the local cluster keeps no accounting database)."""
    return "\n".join(ln for ln in text.splitlines() if "sacct" not in ln and "accounting storage" not in ln)


def start_sweep(cluster: Cluster, tmp: Path, what: str, *overrides: str, launcher: str = "submitit_slurm") -> Sweep:
    results = tmp / what
    results.mkdir(parents=True, exist_ok=True)
    experiment = f"cluster-{what}-{uuid.uuid4().hex[:8]}"
    name = cluster.job_name(what)
    log = results / "sweep.log"
    preset = CPU_PRESET if launcher == "submitit_slurm_cpu" else CPU_NODE
    cmd = [sys.executable, "run.py", "-m", f"hydra/launcher={launcher}", *preset,
           f"hydra.launcher.name={name}", f"results_dir={results}", f"tracking.experiment={experiment}", *SMALL,
           *overrides]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=cluster.env, stdout=out, stderr=subprocess.STDOUT)
    cluster.drivers.append(proc)
    return Sweep(proc, results, experiment, name, log)


def job_runs(cluster: Cluster, experiment: str) -> list[Any]:
    """The runs of the jobs of a sweep (not its parent run), oldest first."""
    c = cluster.client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)
    return [r for r in runs if "sweep_run_id" in r.data.tags]


def parent_run(cluster: Cluster, experiment: str) -> Any:
    c = cluster.client()
    exp = c.get_experiment_by_name(experiment)
    return next(r for r in c.search_runs([exp.experiment_id]) if "sweep_run_id" not in r.data.tags)


def history(cluster: Cluster, run_id: str, key: str = "train/loss") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in cluster.client().get_metric_history(run_id, key))


def wait_until(what: str, predicate: Callable[[], Any], timeout: float, sweep: Sweep | None = None,
               interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if sweep is not None and sweep.proc.poll() is not None:
            raise AssertionError(f"the sweep ended (rc {sweep.proc.returncode}) before {what}\n{sweep.diagnosis()}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                         + (f"\n{sweep.diagnosis()}" if sweep is not None else ""))


# ----- holding a job's processes -----------------------------------------------------------------------------
def task_pids(job_id: str) -> list[int]:
    """The Python processes of a running job's tasks (srun's step; not the batch script, not srun itself)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (f"SLURM_JOB_ID={job_id}".encode() in environ and any(e.startswith(b"SLURM_STEP_ID=") for e in environ)
                and Path(argv[0].decode(errors="replace")).name.startswith("python")):
            pids.append(int(proc.name))
    return pids


def signal_pending(pid: int, signum: int) -> bool:
    """Whether ``signum`` waits to be delivered to process ``pid`` (stopped processes keep it pending)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    bit = 1 << (signum - 1)
    return any(int(v, 16) & bit for k, v in re.findall(r"^(ShdPnd|SigPnd):\s*([0-9a-f]+)", status, re.M))


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (state T)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


@contextlib.contextmanager
def held(pids: list[int]) -> Iterator[None]:
    """The processes stopped (SIGSTOP) inside the block, continued (SIGCONT) after it."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_until("the job's processes to stop", lambda: all(stopped(p) for p in pids), 10, interval=0.005)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def checkpointed_step(results: Path) -> int:
    """The newest step checkpointed under ``results`` (0 if none): the jobs of these tests save every step."""
    steps = [int(p.name[4:]) for p in results.glob("checkpoints/*/*/step*") if p.name[4:].isdigit()]
    return max(steps, default=0)


def training_job(cluster: Cluster, sweep: Sweep, min_step: int) -> tuple[Any, str, list[int]]:
    """Wait until the sweep's (only) job checkpointed step ``min_step``; its MLflow run, SLURM job id, task PIDs.

    Progress is read from the checkpoints (train.checkpoint_interval=1), not from MLflow, whose metrics arrive in
    batches; the job's processes are found first, so that they can be stopped as soon as the step is there (a
    tiny model trains a step in tens of milliseconds). An attempt that ends before it trains (requeued) is skipped.
    """
    deadline = time.monotonic() + 300

    def started() -> tuple[Any, list[int]] | None:
        runs = [r for r in job_runs(cluster, sweep.experiment)
                if r.info.status == "RUNNING" and "slurm_raw_job_id" in r.data.tags]
        pids = task_pids(runs[-1].data.tags["slurm_raw_job_id"]) if runs else []
        return (runs[-1], pids) if pids else None

    while True:
        run, pids = wait_until(f"a job of {sweep.experiment} to start", started, deadline - time.monotonic(), sweep)
        while all(Path(f"/proc/{p}").exists() for p in pids):
            if checkpointed_step(sweep.results) >= min_step:
                return run, run.data.tags["slurm_raw_job_id"], pids
            if time.monotonic() > deadline:
                raise AssertionError(f"the job of {sweep.experiment} did not train\n{sweep.diagnosis()}")
            time.sleep(0.01)


def job_state(cluster: Cluster, job_id: str) -> tuple[str, str]:
    """(state, reason) of a job in squeue; ("", "") once it left the queue."""
    out = cluster.slurm("squeue", "-h", "-j", job_id, "-o", "%T|%r", check=False).strip()
    return tuple(out.splitlines()[0].split("|", 1)) if "|" in out else ("", "")  # type: ignore[return-value]


def start_requeued_now(cluster: Cluster, job_id: str, *extra: str) -> None:
    """A requeued job waits (slurm.conf AuthInfo cred_expire) before it may start again; let it start sooner.

    slurmd revokes the job's credentials when it is requeued and refuses a credential created in the same second
    or before ("Job credential revoked": the attempt fails at once); two seconds later a new one is accepted.
    """
    wait_until(f"job {job_id} to be requeued", lambda: job_state(cluster, job_id)[0] == "PENDING", 120)
    time.sleep(2)
    cluster.slurm("scontrol", "update", f"jobid={job_id}", "starttime=now", *extra)


def assert_each_step_once(steps: list[int], n: int) -> None:
    assert steps == list(range(1, n + 1)), f"steps logged: {steps} (expected 1..{n}, each once)"


# ----- a job at its time limit, in the background -------------------------------------------------------------
TIMED_STEPS = 40
TIME_LIMIT_TEST = "test_a_job_at_its_time_limit_checkpoints_is_requeued_and_finishes"


@dataclass
class TimeLimited:
    """The time-limit job: a sweep of one job, and what the thread driving it saw."""

    sweep: Sweep
    thread: threading.Thread | None = None
    run: Any = None
    job_id: str = ""
    stopped_at: int = -1
    error: BaseException | None = None


def drive_time_limited(cluster: Cluster, t: TimeLimited) -> None:
    """Hold the first attempt's training until SLURM's time limit signal; give the requeued attempt time."""
    try:
        t.run, t.job_id, pids = training_job(cluster, t.sweep, min_step=1)
        with held(pids):
            t.stopped_at = checkpointed_step(t.sweep.results)
            # slurmstepd continues a stopped task to deliver the warning (SIGCONT, then USR2)
            wait_until("SLURM's time limit signal",
                       lambda: all(signal_pending(p, signal.SIGUSR2) or not stopped(p) for p in pids), 90)
        wait_until("the timed-out attempt to end its MLflow run",
                   lambda: cluster.client().get_run(t.run.info.run_id).info.status == "KILLED", 120, t.sweep)
        start_requeued_now(cluster, t.job_id, "timelimit=10")  # the next attempt gets time enough to finish
    except BaseException as e:  # reported by the test
        t.error = e


@pytest.fixture(scope="module")
def time_limited(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> TimeLimited:
    """Started before the module's first test when the time-limit test is selected: its first attempt spends
    most of its minute waiting for SLURM's clock, while the other tests run.

    One minute per attempt. slurmctld checks time limits every 30 s and sends the warning signal (USR2, for
    submitit) at the first check less than signal_delay_s + 30 s before the limit: here 29 to 59 s into the
    attempt, at least 30 s before the check that would kill it.
    """
    sweep = start_sweep(cluster, tmp_path_factory.mktemp("cluster"), "timelimit", "attention=mqa",
                        f"train.max_steps={TIMED_STEPS}", "train.checkpoint_interval=1", "hydra.launcher.timeout_min=1",
                        "hydra.launcher.signal_delay_s=1", "hydra.launcher.max_num_timeout=3")
    cluster.drivers.remove(sweep.proc)  # it runs while other tests do
    cluster.background.append(sweep.proc)
    t = TimeLimited(sweep)
    t.thread = threading.Thread(target=drive_time_limited, args=(cluster, t), daemon=True)
    t.thread.start()
    return t


@pytest.fixture(scope="module", autouse=True)
def _start_the_time_limit_job_early(request: pytest.FixtureRequest) -> None:
    if any(item.name == TIME_LIMIT_TEST for item in request.session.items):
        request.getfixturevalue("time_limited")


# ----- the tests ------------------------------------------------------------------------------------------------
def test_a_sweep_is_a_slurm_job_array_tracked_in_mlflow(cluster, tmp_path):
    sweep = start_sweep(cluster, tmp_path, "array", "attention=gqa,mqa")
    rc, out = sweep.wait(300)
    assert rc == 0, sweep.diagnosis()
    assert "2 jobs: 2 finished" in out, out

    runs = job_runs(cluster, sweep.experiment)
    assert sorted(r.data.tags["attention"] for r in runs) == ["gqa", "mqa"], sweep.diagnosis()
    ids = [r.data.tags["slurm_job_id"] for r in runs]
    arrays = {i.split("_")[0] for i in ids}
    assert len(arrays) == 1 and sorted(i.split("_")[1] for i in ids) == ["0", "1"], f"not one job array: {ids}"
    for r in runs:
        assert r.info.status == "FINISHED", (r.info.run_id, r.info.status, r.data.tags.get("error"))
        assert r.data.tags["launcher"] == "submitit_slurm"
        assert r.data.tags["world_size"] == "1"
        assert_each_step_once([s for s, _ in history(cluster, r.info.run_id)], 6)
        # submitit's folder of that array task holds the job's logs
        assert list(sweep.results.rglob(f".submitit/{r.data.tags['slurm_job_id']}/*_log.out"))
    assert parent_run(cluster, sweep.experiment).info.status == "FINISHED"


def test_a_two_task_job_is_two_fsdp_ranks_logged_once(cluster, tmp_path):
    sweep = start_sweep(cluster, tmp_path, "ranks", "hydra.launcher.tasks_per_node=2", "attention=gqa",
                        launcher="submitit_slurm_cpu")
    rc, out = sweep.wait(300)
    assert rc == 0, sweep.diagnosis()

    (run,) = job_runs(cluster, sweep.experiment)
    assert run.info.status == "FINISHED" and run.data.tags["launcher"] == "submitit_slurm_cpu"  # the CPU preset
    assert run.data.tags["world_size"] == "2" and run.data.params["derived.world_size"] == "2"
    assert_each_step_once([s for s, _ in history(cluster, run.info.run_id)], 6)  # rank 1 logs nothing
    job_id = run.data.tags["slurm_job_id"]
    for rank in (0, 1):  # both tasks ran the job (one log per task), and returned
        assert list(sweep.results.rglob(f".submitit/{job_id}/{job_id}_{rank}_log.out")), sweep.diagnosis()
        assert list(sweep.results.rglob(f".submitit/{job_id}/{job_id}_{rank}_result.pkl")), sweep.diagnosis()


PREEMPTED_STEPS = 30


def test_a_preempted_job_is_requeued_and_continues_its_mlflow_run(cluster, tmp_path):
    # An evaluation at every step: the step the job is preempted at has one due (it must not be lost).
    steps = (f"train.max_steps={PREEMPTED_STEPS}", "train.eval_interval=1")
    reference = start_sweep(cluster, tmp_path, "uninterrupted", "attention=gqa", *steps)
    # checkpoints at every step (the test's way to see the job's progress) change nothing that is trained
    sweep = start_sweep(cluster, tmp_path, "preempted", "attention=gqa", *steps, "train.checkpoint_interval=1")

    run, job_id, pids = training_job(cluster, sweep, min_step=2)
    with held(pids):  # so that the signal lands mid-training
        stopped_at = checkpointed_step(sweep.results)
        cluster.slurm("scancel", "--signal=USR2", job_id)  # submitit's preemption signal, from SLURM
        wait_until("SLURM to deliver USR2", lambda: all(signal_pending(p, signal.SIGUSR2) for p in pids), 30)
    assert stopped_at < PREEMPTED_STEPS - 1
    wait_until("the preempted attempt to end its MLflow run",
               lambda: cluster.client().get_run(run.info.run_id).info.status == "KILLED", 120, sweep)
    start_requeued_now(cluster, job_id)

    rc, out = sweep.wait(300)
    assert rc == 0, sweep.diagnosis()
    assert reference.wait(300)[0] == 0, reference.diagnosis()

    (resumed,) = job_runs(cluster, sweep.experiment)  # one run: the requeued job continued it
    assert resumed.info.run_id == run.info.run_id
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["slurm_restart_count"] == "1" and resumed.data.tags["slurm_raw_job_id"] == job_id
    curve = history(cluster, run.info.run_id)
    assert_each_step_once([s for s, _ in curve], PREEMPTED_STEPS)
    (uninterrupted,) = job_runs(cluster, reference.experiment)
    assert curve == history(cluster, uninterrupted.info.run_id), "the resumed loss curve differs"
    assert history(cluster, run.info.run_id, "eval/loss") == history(cluster, uninterrupted.info.run_id, "eval/loss")


def test_a_job_that_raises_is_failed_in_mlflow_and_fails_the_sweep(cluster, tmp_path):
    broken = tmp_path / "broken-tokenizer.json"
    broken.write_text("{ not a tokenizer")
    sweep = start_sweep(cluster, tmp_path, "failing", f"data.tokenizer.path=null,{broken}")
    rc, out = sweep.wait(300)
    assert rc == 1, sweep.diagnosis()
    assert "2 jobs: 1 finished, 1 FAILED" in out and "Error: 1 of 2 jobs failed" in out, out
    assert re.search(r"#1 +FAILED .*tokenizer", out), out

    runs = {r.data.params["data.tokenizer.path"]: r for r in job_runs(cluster, sweep.experiment)}
    assert runs["None"].info.status == "FINISHED"
    failed = runs[str(broken)]
    assert failed.info.status == "FAILED" and "tokenizer" in failed.data.tags["error"]
    assert failed.data.tags["slurm_job_id"].endswith("_1")
    assert parent_run(cluster, sweep.experiment).info.status == "FAILED"


# ----- MLflow and Optuna on PostgreSQL --------------------------------------------------------------------------
WRITERS = 16
WRITER_STEPS = 300
WRITER_KEYS = ("train/loss", "train/flops", "train/tokens", "train/lr", "train/grad_norm")


def metric_value(writer: int, key: int, step: int) -> float:
    return writer * 1e6 + key * 1e4 + step + 0.25


def write_metrics(uri: str, experiment_id: str, writer: int, barrier_dir: str) -> dict[str, Any]:
    """A SLURM job: one MLflow run written through olmo.tracking (TrackedRun, its background MetricWriter) as a
    training job writes it, started together with the other writers (a file barrier)."""
    from olmo.tracking import TrackedRun
    from olmo.tracking.job import slurm_tags

    barrier = Path(barrier_dir)
    (barrier / f"ready-{writer}").touch()
    deadline = time.time() + 240
    while len(list(barrier.glob("ready-*"))) < WRITERS and time.time() < deadline:
        time.sleep(0.05)
    started = time.time()
    run = TrackedRun.start(uri, experiment_id, run_name=f"writer-{writer}", tags={"writer": str(writer),
                           **slurm_tags()})
    for step in range(1, WRITER_STEPS + 1):  # a step every 10 ms: 3 s of training, as seen by MLflow
        run.log_metrics({k: metric_value(writer, i, step) for i, k in enumerate(WRITER_KEYS)}, step)
        time.sleep(0.01)
    run.end("FINISHED")
    return {"run_id": run.run_id, "started": started, "ended": time.time(), "errors": run.writer.errors}


def test_mlflow_server_on_postgresql_takes_16_concurrent_jobs_metrics(cluster, tmp_path, monkeypatch):
    import cloudpickle
    import submitit

    # the job function travels by value: the SLURM jobs do not import this test module
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for key in ("SLURM_CONF", "OMP_NUM_THREADS", "PYTHONPATH"):
        monkeypatch.setenv(key, cluster.env[key])  # sbatch and the jobs see the test's environment
    c = cluster.client()
    experiment_id = c.create_experiment(f"cluster-writers-{uuid.uuid4().hex[:8]}")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=10, cpus_per_task=1, name=cluster.job_name("writers"),
                               slurm_array_parallelism=WRITERS)
    jobs = executor.map_array(write_metrics, [cluster.mlflow_uri] * WRITERS, [experiment_id] * WRITERS,
                              list(range(WRITERS)), [str(barrier)] * WRITERS)
    results = [j.result() for j in jobs]

    assert max(r["started"] for r in results) < min(r["ended"] for r in results), "the writers did not overlap"
    assert not any(r["errors"] for r in results), [r["errors"] for r in results]
    runs = c.search_runs([experiment_id], max_results=100)
    assert len(runs) == WRITERS and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["slurm_job_id"] for r in runs}) == WRITERS
    for r in runs:
        writer = int(r.data.tags["writer"])
        for i, key in enumerate(WRITER_KEYS):
            got = history(cluster, r.info.run_id, key)
            want = [(s, metric_value(writer, i, s)) for s in range(1, WRITER_STEPS + 1)]
            assert got == want, f"writer {writer} {key}: {len(got)} of {WRITER_STEPS} points, or wrong values"


def test_an_optuna_study_on_postgresql_runs_4_slurm_workers(cluster, tmp_path):
    import optuna

    results = tmp_path / "search"
    experiment = f"cluster-search-{uuid.uuid4().hex[:8]}"
    study = f"cluster-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "sweeps.search", "search=lr_warmup", "launcher=submitit_slurm", "workers=4",
           "n_trials=4", f"study={study}", f"storage={cluster.pg_optuna_url}", "heartbeat_interval=5",
           *CPU_NODE, f"hydra.launcher.name={cluster.job_name('search')}", f"results_dir={results}",
           f"tracking.experiment={experiment}", *SMALL]
    out = subprocess.run(cmd, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=400)
    text = out.stdout + out.stderr
    assert out.returncode == 0, _tail(text, 4000)

    trials = optuna.load_study(study_name=study, storage=cluster.pg_optuna_url).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4, [(t.number, t.state) for t in trials]
    runs = job_runs(cluster, experiment)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    jobs = {r.data.tags.get("slurm_raw_job_id") for r in runs}
    assert None not in jobs, "trials ran outside SLURM"
    workers = list(results.rglob("submitit/*/*_submitted.pkl"))
    assert len(workers) == 4, f"{len(workers)} worker jobs, not 4"


def test_a_job_at_its_time_limit_checkpoints_is_requeued_and_finishes(cluster, time_limited):
    t = time_limited
    t.thread.join(timeout=300)
    assert not t.thread.is_alive(), f"the time-limit job is stuck\n{t.sweep.diagnosis()}"
    if t.error is not None:
        raise t.error
    assert t.stopped_at < TIMED_STEPS - 1

    rc, out = t.sweep.wait(300)
    assert rc == 0, t.sweep.diagnosis()
    finished = [r for r in job_runs(cluster, t.sweep.experiment) if r.info.status == "FINISHED"]
    assert [r.info.run_id for r in finished] == [t.run.info.run_id], t.sweep.diagnosis()
    # requeued once (twice if SLURM's signal came before an attempt trained: it then had nothing to save)
    assert int(finished[0].data.tags["slurm_restart_count"]) >= 1
    assert_each_step_once([s for s, _ in history(cluster, t.run.info.run_id)], TIMED_STEPS)
    logs = "".join(p.read_text() for p in t.sweep.results.rglob(f".submitit/{t.job_id}/*_log.*"))
    assert "this job is timed-out" in logs, "submitit did not see a time limit"


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::optuna.exceptions.ExperimentalWarning")
def test_workers_racing_on_postgresql_create_exactly_n_trials(cluster, tmp_path):
    """The advisory lock of sweeps/ask_gate.py: 8 workers, 5 trials (2 enqueued), none created twice or run twice."""
    import optuna

    from tests.ask_race import race_asks

    trials, taken = race_asks(cluster.pg_optuna_url, f"race-{uuid.uuid4().hex[:8]}", n_trials=5, workers=8,
                              lock_file=tmp_path / "unused.lock", enqueued=2)
    assert len(trials) == 5, [(t.number, t.state.name) for t in trials]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sum(taken) == 5
