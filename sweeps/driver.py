"""The driver side of run.py (Hydra callbacks, in the process that launches the jobs).

Before any job starts: every job of the sweep is composed, converted to olmo's dataclasses and validated
(a bad value fails the whole sweep with one line per bad job); the MLflow store and experiment are created
once (MLflow's sqlite store is not safe to create from several processes at once); the sweep's parent run is
opened and its id written to ``<sweep dir>/olmo_sweep.json`` for the jobs (possibly other processes or nodes).
After the sweep: a summary of every job (finished, skipped, failed with its error); a non-zero exit when
any job failed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from olmo.config import ExperimentConfig
from olmo.errors import OLMoConfigurationError
from olmo.tracking import config_hash, git_commit, prepare_store, resolve_tracking_uri
from olmo.tracking.store import client, finished_run
from olmo.tracking.ui import save_sweep_view, sweep_url, view_key
from olmo.tracking.ui_server import dashboard_url
from sweeps.schema import Composed, to_configs

log = logging.getLogger(__name__)

SWEEP_FILE = "olmo_sweep.json"
JOB_FILE = "olmo_job.json"
# Overrides that do not name the experiment (left out of run names).
NOT_IN_NAMES = ("results_dir", "force", "tracking.", "hydra.", "data.cache_dir", "+sweep", "sweep")
EXIT_BAD_CONFIG = 2
EXIT_JOBS_FAILED = 1


@dataclass
class SweepJob:
    num: int
    overrides: list[str]
    config_hash: str = ""


@dataclass
class SweepInfo:
    """What the driver tells the jobs (through <sweep dir>/olmo_sweep.json)."""

    sweep_id: str
    swept_keys: list[str]
    jobs: list[dict[str, Any]] = field(default_factory=list)
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None  # the sweep's own run
    group_seeds: bool = False  # the sweep runs several seeds of each variant

    def write(self, sweep_dir: Path) -> None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        tmp = sweep_dir / (SWEEP_FILE + ".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        os.replace(tmp, sweep_dir / SWEEP_FILE)

    @classmethod
    def read(cls, sweep_dir: str | Path) -> SweepInfo | None:
        path = Path(sweep_dir) / SWEEP_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


def is_main_process() -> bool:
    """Rank 0 under torchrun (each rank runs the driver); the only process otherwise."""
    return int(os.environ.get("RANK", "0")) == 0


class SweepCallback(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _guard(lambda: _run_start(config))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _guard(lambda: _multirun_start(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _guard(lambda: _multirun_end(config))


def _guard(fn: Callable[[], None]) -> None:
    """Hydra turns a callback's exception into a warning; here a bad config or a driver bug stops the run."""
    try:
        fn()
    except SystemExit:
        raise
    except (OLMoConfigurationError, OmegaConfBaseException) as e:
        print(f"Error: {_one_line(e)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from None
    except Exception:
        traceback.print_exc()
        raise SystemExit(EXIT_JOBS_FAILED) from None


def _one_line(e: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line: the error, the cause, the allowed options."""
    parts: list[str] = []
    for err in (e, e.__cause__):
        if err is None:
            continue
        options: list[str] = []
        for line in str(err).splitlines():
            text = line.strip()
            if text.startswith("Config search path"):
                break
            if not text or text.startswith(("reference_type", "object_type", "full_key")):
                continue
            if line.startswith("\t") and options:
                options.append(text)
            elif text.startswith("Available options"):
                options = [text.rstrip(":").replace("Available options in", "options of") + ":"]
            else:
                parts.append(text)
        if options:
            parts.append(options[0] + " " + ", ".join(options[1:]))
    return "; ".join(parts) or type(e).__name__


# ----- single run ---------------------------------------------------------------------------------------
def _run_start(config: DictConfig) -> None:
    composed = to_configs(config, config.hydra.runtime.cwd)
    check_experiment(composed.experiment, world_size_of(config))
    if composed.tracking.enabled and is_main_process():
        prepare_store(resolve_tracking_uri(composed.tracking.uri, composed.results_dir), composed.tracking.experiment)


# ----- multirun -------------------------------------------------------------------------------------------
def sweep_jobs(config: DictConfig) -> tuple[list[SweepJob], list[str]]:
    """The jobs of the sweep in the order Hydra's basic sweeper launches them, and the swept keys."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    parsed = parser.parse_overrides(args)
    swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    batches = BasicSweeper.split_arguments(parsed, None)
    return [SweepJob(i, list(o)) for i, o in enumerate(batches[0])], swept


def world_size_of(config: DictConfig) -> int:
    """Ranks per job: submitit's tasks, torchrun's WORLD_SIZE, else 1."""
    launcher = config.hydra.get("launcher") or {}
    target = str(launcher.get("_target_", ""))
    if "submitit" in target:
        return int(launcher.get("tasks_per_node") or 1) * int(launcher.get("nodes") or 1)
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_experiment(exp: ExperimentConfig, world_size: int) -> None:
    """What a job would check at start-up, without data or processes: the config and the budget."""
    from olmo.train.budget import training_budget

    exp.validate(world_size)
    model = exp.model
    if exp.data.source != "memmap" or exp.data.tokenizer.path is None:
        model = model.replace(vocab_size=exp.data.tokenizer.vocab_size)  # the data decides the vocabulary
    training_budget(model, exp.train)


class SweepConfigError(Exception):
    """Some jobs of a sweep have a bad config: one line per bad job."""

    def __init__(self, lines: list[str], n_jobs: int) -> None:
        self.lines, self.n_jobs = lines, n_jobs
        shown = lines[:20] + ([f"... and {len(lines) - 20} more"] if len(lines) > 20 else [])
        super().__init__("\n".join(
            [f"{len(lines)} of {n_jobs} jobs have a bad config; no job was started:"] + [f"  {ln}" for ln in shown]
        ))


def validate_sweep(config: DictConfig) -> tuple[list[SweepJob], list[str], Composed]:
    """Compose, convert and validate every job of the multirun ``config``; raise SweepConfigError listing every
    bad job (and jobs that would train the same config twice). Returns the jobs (with their config hashes),
    the swept keys and the first job's converted config."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    cwd = config.hydra.runtime.cwd
    jobs, swept = sweep_jobs(config)
    world_size = world_size_of(config)
    errors: list[str] = []
    first: Composed | None = None
    seen: dict[str, int] = {}
    start = time.perf_counter()
    if len(jobs) > 20:
        log.info("validating the configs of %d jobs (~0.2 s each) before launching any", len(jobs))
    for job in jobs:
        try:
            job_cfg = loader.load_sweep_config(config, job.overrides)
            c = to_configs(job_cfg, cwd)
            check_experiment(c.experiment, world_size)
        except Exception as e:  # noqa: BLE001  (every composition/validation error is reported, one line each)
            errors.append(f"job #{job.num} ({_name(job.overrides, swept)}): {_one_line(e)}")
            continue
        first = first or c
        job.config_hash = config_hash(c.experiment)
        if job.config_hash in seen:
            errors.append(f"job #{job.num} ({_name(job.overrides, swept)}) trains the same config as job "
                          f"#{seen[job.config_hash]} (config hash {job.config_hash})")
        seen.setdefault(job.config_hash, job.num)
    if errors or first is None:
        raise SweepConfigError(errors, len(jobs))
    log.info("validated %d job configs in %.1fs", len(jobs), time.perf_counter() - start)
    return jobs, swept, first


def _multirun_start(config: DictConfig) -> None:
    try:
        jobs, swept, composed = validate_sweep(config)
    except SweepConfigError as e:
        print(f"Error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from None
    if not is_main_process():
        return

    sweep_dir = Path(str(config.hydra.sweep.dir))
    preset = config.hydra.runtime.choices.get("sweep")
    info = SweepInfo(
        sweep_id=time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2), swept_keys=swept,
        jobs=[{"num": j.num, "overrides": j.overrides, "config_hash": j.config_hash} for j in jobs],
    )
    if composed.tracking.enabled:
        uri = resolve_tracking_uri(composed.tracking.uri, composed.results_dir)
        experiment_id = prepare_store(uri, composed.tracking.experiment)
        c = client(uri)
        done = 0 if composed.force else sum(finished_run(c, experiment_id, j.config_hash) is not None for j in jobs)
        tags = {
            "sweep_id": info.sweep_id,
            "sweep_overrides": " ".join(config.hydra.overrides.task),
            "sweep_params": " ".join(f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()),
            "n_jobs": str(len(jobs)),
            "launcher": launcher_name(config.hydra.runtime.choices),
            "git_commit": git_commit() or "",
            "sweep_dir": str(sweep_dir),
        }
        if preset:
            tags["sweep_preset"] = preset
        run = c.create_run(experiment_id, run_name=f"sweep {preset or ''} {info.sweep_id}".replace("  ", " "),
                           tags=tags)
        info.tracking_uri, info.experiment_id, info.parent_run_id = uri, experiment_id, run.info.run_id
        info.group_seeds = SEED_KEY in swept
        save_sweep_view(c, experiment_id, info.sweep_id, group_seeds=info.group_seeds)
        log.info("sweep %s: %d jobs (%d already finished, skipped unless force=true); MLflow sweep run %s in %s",
                 info.sweep_id, len(jobs), done, run.info.run_id, uri)
        print(dashboard_hint(info), flush=True)
    info.write(sweep_dir)


def dashboard_command(info: SweepInfo) -> str:
    store = f" --tracking-uri {info.tracking_uri}" if info.tracking_uri else ""
    return f"python -m analysis.dashboard --sweep {info.sweep_id}{store}"


def dashboard_hint(info: SweepInfo) -> str:
    """Where to watch the sweep: the URL of its runs in chart view (on ``mlflow ui``'s default address) and the
    command that starts the UI on this store (or finds the one running) and opens that URL."""
    url = sweep_url(dashboard_url(info.tracking_uri), str(info.experiment_id), view_key(info.sweep_id))
    return f"dashboard: {dashboard_command(info)}\n  then open {url}"


def launcher_name(choices: Any) -> str:
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "torchrun"
    return str(choices.get("hydra/launcher") or "basic")


def _name(overrides: list[str], swept: list[str]) -> str:
    """The part of a job's overrides that tells it apart: the swept keys (else every meaningful override)."""
    picked = [o for o in overrides if o.split("=", 1)[0] in swept] if swept else []
    if not picked:
        picked = [o for o in overrides if not o.lstrip("+~").startswith(NOT_IN_NAMES)]
    return " ".join(picked) or "defaults"


SEED_KEY = "train.seed"


def variant_name(overrides: list[str], swept: list[str]) -> str:
    """What tells a job's config apart, from its values, without the seed: ``gqa-rope`` for
    ``attention=gqa pos=rope``; a dotted key keeps its last part (``optim.lr=0.001`` -> ``lr=0.001``)."""
    parts = []
    for o in _name(overrides, swept).split():
        key, _, value = o.lstrip("+~").partition("=")
        if key == SEED_KEY or not value:
            continue
        parts.append(f"{key.rsplit('.', 1)[1]}={value}" if "." in key else value.replace("/", "-"))
    return "-".join(parts) or "default"


def run_name(overrides: list[str], swept: list[str], seed: int) -> str:
    """The MLflow run name: the variant and the seed, e.g. ``gqa-rope-s1``."""
    return f"{variant_name(overrides, swept)}-s{seed}"


def _multirun_end(config: DictConfig) -> None:
    if not is_main_process():
        return
    sweep_dir = Path(str(config.hydra.sweep.dir))
    info = SweepInfo.read(sweep_dir)
    if info is None:
        return
    outcomes: dict[int, dict[str, Any]] = {}
    for path in sweep_dir.rglob(JOB_FILE):
        data = json.loads(path.read_text())
        outcomes[int(data["num"])] = data
    lines, failed, counts = [], 0, {}
    for job in info.jobs:
        o = outcomes.get(job["num"])
        name = _name(job["overrides"], info.swept_keys)
        if o is None:
            status, detail = "FAILED", "no result: the job process died before reporting (see its log)"
        else:
            status = o["status"]
            detail = _detail(o)
        if status in ("failed", "FAILED"):
            status = "FAILED"
            failed += 1
        counts[status] = counts.get(status, 0) + 1
        lines.append(f"  #{job['num']:<3} {status:<9} {name:<40} {detail}")
    head = f"sweep {info.sweep_id}: {len(info.jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    where = f"results: {sweep_dir}"
    if info.tracking_uri:
        where += f"\nMLflow: sweep run {info.parent_run_id} in {info.tracking_uri}\n{dashboard_hint(info)}"
    summary = "\n".join([head, *lines, where])
    (sweep_dir / "summary.txt").write_text(summary + "\n")
    print(summary, flush=True)
    if info.parent_run_id and info.tracking_uri:
        c = client(info.tracking_uri)
        run_ids = [o["run_id"] for o in outcomes.values() if o.get("run_id")]
        if info.experiment_id and len(run_ids) == len(info.jobs):  # the sweep's runs, skipped jobs' included
            save_sweep_view(c, info.experiment_id, info.sweep_id, run_ids, group_seeds=info.group_seeds)
        c.log_text(info.parent_run_id, summary + "\n", "summary.txt")
        c.set_tag(info.parent_run_id, "n_failed", str(failed))
        c.set_terminated(info.parent_run_id, status="FAILED" if failed else "FINISHED")
    if failed:
        print(f"Error: {failed} of {len(info.jobs)} jobs failed", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_JOBS_FAILED)


def _detail(o: dict[str, Any]) -> str:
    run = f"run {o['run_id'][:12]}" if o.get("run_id") else "no MLflow run"
    if o["status"] == "failed":
        return f"{run}: {o.get('error')}"
    if o["status"] == "skipped":
        return f"{run}: already finished"
    loss = o.get("final_eval_loss")
    return f"{run}" + (f", eval/loss {loss:.4f}" if isinstance(loss, float) else "") + \
        (f", {o['steps']} steps" if o.get("steps") is not None else "")


def job_config_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
