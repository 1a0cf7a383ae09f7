"""Optuna hyperparameter searches over run.py's configs, pruned at FLOP milestones.

A grid answers "which architecture"; a search answers "at its best learning rate, warmup, width...". A search is
a YAML file in ``sweeps/searches/`` (base overrides, objective, space, sampler, pruner); each trial is one
training job composed with Hydra from ``conf/`` exactly like ``python run.py <overrides>``.

    python -m sweeps.search search=lr_warmup                          the study on one local worker
    python -m sweeps.search search=lr_warmup n_trials=40 workers=4    4 local worker processes, one sqlite file
    python -m sweeps.search search=lr_warmup train=flops_1e14         + overrides of every trial (run.py's syntax)
    python -m sweeps.search search=lr_warmup launcher=submitit_slurm workers=32 \\
        hydra.launcher.partition=gpu storage=postgresql://user:pw@db/optuna        32 SLURM jobs
    python -m sweeps.search search=lr_warmup --dry-run               validate, print the plan, run nothing
    python -m sweeps.search --list                                    the searches in sweeps/searches/

Arguments are ``key=value``. Search keys: ``search`` (a name in sweeps/searches/ or a YAML path), ``study``,
``n_trials``, ``workers``, ``launcher`` (local | inline | any hydra/launcher option, e.g. submitit_local,
submitit_slurm), ``ranks`` (processes per trial), ``storage``, ``sampler``, ``pruner``, ``seed``,
``heartbeat_interval``, ``grace_period``, ``max_retry``, ``keep_checkpoints``, ``max_worker_failures``,
``reset_running``, ``poll_seconds``, and dotted ``sampler.*``, ``pruner.*``, ``objective.*``,
``milestones.*``. Every other argument is an override of every trial's config (``model=small``,
``train.seq_len=128``), as on run.py's command line; ``hydra.launcher.*`` overrides configure the submitit launcher.

How it runs: the driver (this command) validates everything, creates the Optuna storage and the study (once,
before any worker starts: sqlite and MLflow's store must not be created by several processes at once), the
MLflow parent run, enqueues the baseline trials and writes ``<results>/searches/<study>/plan.json``; then it keeps
``workers`` workers busy (local processes or submitit jobs) until ``n_trials`` trials are done. A worker loads
the study and runs trials one after the other; rank 0 of a multi-rank trial talks to Optuna and broadcasts the
trial and every pruning decision to the other ranks. A trial whose worker died (its heartbeat stopped, or the
driver saw the process/job die) is failed and retried with the same parameters as a new trial. Running the same
command again resumes the study (same name, same storage). At the end: the best trial as an override line for
run.py and ``best.yaml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from olmo.errors import OLMoConfigurationError, bad_value
from olmo.train.callbacks import Callback
from sweeps.ask_gate import NothingToAsk, gate_asks, lock_for

log = logging.getLogger("sweeps.search")

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SEARCHES_DIR = Path(__file__).resolve().parent / "searches"
SEARCHES_SUBDIR = "searches"  # <results_dir>/searches/<study>/
STORAGE_FILE = "optuna.db"
PLAN_FILE = "plan.json"
BEST_FILE = "best.yaml"
BEST_LINE_FILE = "best_overrides.txt"
EXIT_BAD_CONFIG = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

# Trial overrides added before the search's own: no model artifact per trial in MLflow, no checkpoints during a
# trial (a retried trial starts again from scratch). Neither changes the config hash of what is trained.
INTERNAL_OVERRIDES = ("tracking.log_model=false", "train.checkpoint_interval=null")
# Overrides that change where or how things are written, not what is trained: left out of the study name's hash.
NOT_IN_STUDY_HASH = ("results_dir", "data.cache_dir", "tracking.", "hydra.", "hydra/", "force", "train.progress_bar",
                     "train.checkpoint_interval", "train.keep_last", "train.peak_flops_per_second")
# Trial user attributes that describe one execution (the worker that ran it): not copied to a retry.
RUNTIME_ATTRS = ("worker", "host", "pid", "mlflow_run_id", "error", "pruned_at_milestone", "pruned_at_flops",
                 "interrupted")
RETRY_OF = "failed_trial"  # Optuna's RetryFailedTrialCallback keys, so its helpers work on our retries
RETRY_HISTORY = "retry_history"

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "percentile", "hyperband", "none")
DIRECTIONS = ("minimize", "maximize")
PARAM_TYPES = ("float", "int", "categorical")
LOCAL_LAUNCHERS = ("local", "inline")


class SearchConfigError(OLMoConfigurationError):
    """The search file or the command line is wrong (one line: what, the value, what is allowed)."""


# ======================================================================================================
# The search: parsed from YAML + command line, validated before anything starts
# ======================================================================================================
@dataclass
class Param:
    """One dimension of the space: a config value (``optim.lr``) or a Hydra group choice (``attention``)."""

    name: str
    type: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] | None = None
    group: bool = False  # a Hydra config group: its value picks conf/<name>/<value>.yaml

    def suggest(self, trial: Any, grid: bool = False) -> Any:
        if grid or self.type == "categorical":
            return trial.suggest_categorical(self.name, self.grid_values() if grid else self.choices)
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)

    def grid_values(self) -> list[Any]:
        if self.type == "categorical":
            return list(self.choices or [])
        step = self.step or (1 if self.type == "int" else None)
        if step is None:
            raise bad_value(f"space.{self.name}.step", None, "a step (sampler=grid enumerates the values)")
        n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(n)]
        return [int(v) for v in values] if self.type == "int" else [float(repr(round(v, 12))) for v in values]

    def probe_values(self) -> list[Any]:
        """The values composed and validated before the search starts: every choice, both ends of a range."""
        return list(self.choices or []) if self.type == "categorical" else [self.low, self.high]

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return any(_same(value, c) for c in self.choices or [])
        if self.type == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
            return False
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def override(self, value: Any) -> str:
        return f"{self.name}={format_value(value)}"


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind (True is not 1; 2 and 2.0 are the same number)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    return a == b


@dataclass
class Search:
    name: str
    path: str
    description: str = ""
    base: list[str] = field(default_factory=list)  # run.py overrides of every trial, from the search file
    overrides: list[str] = field(default_factory=list)  # run.py overrides of every trial, from the command line
    metric: str = "eval/loss"  # the objective: this metric at the last evaluation of the trial
    direction: str = "minimize"
    flops: float | None = None  # the trials' FLOP budget (train.max_flops); None: the base config's budget
    space: list[Param] = field(default_factory=list)
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    milestones: dict[str, int] = field(default_factory=lambda: {"per_decade": 4, "decades": 2})
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # baseline trials, run first
    n_trials: int = 20
    workers: int = 1
    launcher: str = "local"
    ranks: int = 1
    storage: str | None = None  # None: sqlite <results_dir>/optuna.db
    study: str | None = None  # None: <search name>-<hash of what the search asks>
    seed: int | None = 0
    heartbeat_interval: int = 60  # seconds between a running trial's heartbeats (RDB storages)
    grace_period: int | None = None  # seconds without heartbeat before a trial is stale; None: 2 * interval + 60
    max_retry: int = 2  # retries of a trial whose worker died
    keep_checkpoints: bool = False  # keep each trial's checkpoint folder (deleted after the trial by default)
    max_worker_failures: int = 10  # workers that may die before the driver gives up
    reset_running: bool = False  # at start, fail and retry trials left RUNNING (journal storage: no heartbeats)
    poll_seconds: float = 2.0  # how often the driver looks at workers and the storage

    @property
    def trial_overrides(self) -> list[str]:
        """The command line's overrides of run.py's config (hydra.* ones configure the launcher only)."""
        return [o for o in self.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]

    @property
    def launcher_overrides(self) -> list[str]:
        return [o for o in self.overrides if o.lstrip("+~").startswith("hydra.")]

    @property
    def grid(self) -> bool:
        return self.sampler.get("name") == "grid"

    def param(self, name: str) -> Param:
        return next(p for p in self.space if p.name == name)

    def question_hash(self) -> str:
        """What the search asks (space, objective, fixed overrides, milestones): same command, same study."""
        kept = [o for o in [*self.base, *self.overrides] if not o.lstrip("+~").startswith(NOT_IN_STUDY_HASH)]
        blob = json.dumps({"space": [dataclasses.asdict(p) for p in self.space], "overrides": kept,
                           "metric": self.metric, "direction": self.direction, "flops": self.flops,
                           "milestones": self.milestones},  # reports at other milestones do not compare
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    @property
    def study_name(self) -> str:
        return self.study or f"{self.name}-{self.question_hash()}"


SEARCH_FIELDS = {f.name for f in dataclasses.fields(Search)} - {"name", "path", "overrides", "metric", "direction",
                                                                 "flops", "space", "description", "base", "enqueue"}
FILE_FIELDS = SEARCH_FIELDS | {"description", "base", "objective", "space", "enqueue"}
CLI_DOTTED = ("sampler", "pruner", "objective", "milestones")


def available_searches() -> list[str]:
    return sorted(p.stem for p in SEARCHES_DIR.glob("*.yaml"))


def find_search_file(name: str) -> Path:
    candidates = [Path(name), SEARCHES_DIR / name, SEARCHES_DIR / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise SearchConfigError(str(bad_value("search", name, available_searches() or "a YAML file")))


def parse_args(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``key=value`` arguments -> (search settings, overrides of every trial)."""
    settings: dict[str, Any] = {}
    overrides: list[str] = []
    for arg in argv:
        if "=" not in arg:
            raise SearchConfigError(f"argument {arg!r} is invalid; allowed: key=value (see --help)")
        key, value = arg.split("=", 1)
        if key == "hydra/launcher":
            key = "launcher"
        head = key.split(".", 1)[0]
        if key in SEARCH_FIELDS or key == "search" or key == "study" or (head in CLI_DOTTED and "." in key):
            settings[key] = _yaml_value(value)
        else:
            overrides.append(arg)
    return settings, overrides


def _yaml_value(text: str) -> Any:
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    return _number(value)


def _number(value: Any) -> Any:
    """YAML 1.1 reads 1e-4 as a string: numbers written that way are numbers here."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") and value.strip()[:1] in "+-.0123456789" else value
        except ValueError:
            return value
    return value


def load_search(name: str, argv: Sequence[str] = ()) -> Search:
    """Read the search file named by ``search=`` (or ``name``) and apply the command line; one-line errors."""
    settings, overrides = parse_args(argv)
    name = str(settings.pop("search", name) or "")
    if not name:
        raise SearchConfigError(f"search=None is invalid; allowed: {', '.join(available_searches())} or a YAML file")
    path = find_search_file(name)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SearchConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SearchConfigError(f"{path}: a mapping of {sorted(FILE_FIELDS)} is needed, not {type(raw).__name__}")
    for key, value in settings.items():  # the command line wins over the file
        if "." in key:
            head, rest = key.split(".", 1)
            section = raw.get(head)
            section = {"name": section} if isinstance(section, str) else dict(section or {})
            section[rest] = value
            raw[head] = section
        else:
            raw[key] = value
    try:
        return build_search(raw, path.stem, str(path), overrides)
    except OLMoConfigurationError as e:
        raise SearchConfigError(f"search {path.stem}: {e}") from None


def build_search(raw: dict[str, Any], name: str, path: str, overrides: Sequence[str] = ()) -> Search:
    unknown = sorted(set(raw) - FILE_FIELDS)
    if unknown:
        raise bad_value(unknown[0], raw[unknown[0]], sorted(FILE_FIELDS))
    s = Search(name=name, path=path, overrides=list(overrides))
    s.description = str(raw.get("description") or "")
    s.base = _str_list("base", raw.get("base") or [])
    objective = raw.get("objective") or {}
    if not isinstance(objective, dict):
        raise bad_value("objective", objective, "a mapping with metric, direction, flops")
    extra = sorted(set(objective) - {"metric", "direction", "flops"})
    if extra:
        raise bad_value(f"objective.{extra[0]}", objective[extra[0]], ("metric", "direction", "flops"))
    s.metric = str(objective.get("metric", s.metric))
    if not (s.metric.startswith("eval/")):
        raise bad_value("objective.metric", s.metric, "an evaluation metric: eval/loss or eval/perplexity")
    s.direction = str(objective.get("direction", s.direction))
    if s.direction not in DIRECTIONS:
        raise bad_value("objective.direction", s.direction, DIRECTIONS)
    flops = _number(objective.get("flops"))
    if flops is not None and (isinstance(flops, bool) or not isinstance(flops, (int, float)) or not flops > 0):
        raise bad_value("objective.flops", flops, "null or a positive number of FLOPs (train.max_flops)")
    s.flops = float(flops) if flops is not None else None
    s.space = parse_space(raw.get("space"))
    for key in ("sampler", "pruner"):
        if key in raw:
            setattr(s, key, _named(key, raw[key]))
    if s.sampler["name"] not in SAMPLERS:
        raise bad_value("sampler", s.sampler["name"], SAMPLERS)
    if s.pruner["name"] not in PRUNERS:
        raise bad_value("pruner", s.pruner["name"], PRUNERS)
    if "milestones" in raw:
        m = raw["milestones"] or {}
        if not isinstance(m, dict) or set(m) - {"per_decade", "decades"}:
            raise bad_value("milestones", m, "a mapping of per_decade and decades (positive integers)")
        s.milestones = {**s.milestones, **m}
    for key, value in s.milestones.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad_value(f"milestones.{key}", value, "a positive integer")
    for key in SEARCH_FIELDS - {"sampler", "pruner", "milestones"}:
        if key in raw:
            setattr(s, key, raw[key])
    if isinstance(s.study, (int, float)) and not isinstance(s.study, bool):
        s.study = str(s.study)  # study=2024 on the command line is a name
    _check_settings(s)
    s.enqueue = _parse_enqueue(raw.get("enqueue") or [], s)
    if s.grid:
        size = math.prod(len(p.grid_values()) for p in s.space)
        if "n_trials" not in raw or s.n_trials > size:
            s.n_trials = size  # the whole grid, once
    return s


def _str_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise bad_value(name, value, "a list of run.py overrides (key=value)")
    return list(value)


def _named(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return {k: _number(v) for k, v in value.items()}
    allowed = SAMPLERS if key == "sampler" else PRUNERS
    raise bad_value(key, value, f"a name ({', '.join(allowed)}) or a mapping with name and options")


def parse_space(raw: Any) -> list[Param]:
    if not isinstance(raw, dict) or not raw:
        raise bad_value("space", raw, "a non-empty mapping of config keys to distributions")
    return [parse_param(str(k), v) for k, v in raw.items()]


def parse_param(name: str, spec: Any) -> Param:
    where = f"space.{name}"
    if not name or name.startswith(("hydra", "+", "~")) or "=" in name or " " in name:
        raise bad_value("space", name, "config keys (optim.lr) or config groups (attention)")
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise bad_value(where, spec, "a list of choices or {type: float|int|categorical, ...}")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind not in PARAM_TYPES:
        raise bad_value(f"{where}.type", kind, PARAM_TYPES)
    allowed_keys = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    extra = sorted(set(spec) - allowed_keys)
    if extra:
        raise bad_value(f"{where}.{extra[0]}", spec[extra[0]], sorted(allowed_keys))
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad_value(f"{where}.choices", choices, "a non-empty list")
        choices = [_number(c) for c in choices]
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise bad_value(f"{where}.choices", c, "None, booleans, numbers or strings")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise bad_value(f"{where}.choices", choices, "distinct values")
        return Param(name, "categorical", choices=choices)
    low, high, step = (_number(spec.get(k)) for k in ("low", "high", "step"))
    log_scale = spec.get("log", False)
    numeric = (int,) if kind == "int" else (int, float)
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, numeric) or not math.isfinite(value):
            raise bad_value(f"{where}.{key}", value, f"a finite {'integer' if kind == 'int' else 'number'}")
    if not isinstance(log_scale, bool):
        raise bad_value(f"{where}.log", log_scale, "true or false")
    if not low < high:
        raise bad_value(f"{where}.high", high, f"a number above low={low} (the range is empty)")
    if log_scale and low <= 0:
        raise bad_value(f"{where}.low", low, "a positive number with log: true")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, numeric) or not step > 0:
            raise bad_value(f"{where}.step", step, f"a positive {'integer' if kind == 'int' else 'number'}")
        if log_scale and not (kind == "int" and step == 1):
            raise bad_value(f"{where}.step", step, "no step with log: true")
    if kind == "float":
        return Param(name, "float", low=float(low), high=float(high), log=log_scale,
                     step=float(step) if step is not None else None)
    return Param(name, "int", low=int(low), high=int(high), log=log_scale, step=int(step) if step else None)


def _parse_enqueue(raw: Any, s: Search) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise bad_value("enqueue", raw, "a list of {key: value} baseline trials")
    names = [p.name for p in s.space]
    out = []
    for i, trial in enumerate(raw):
        if not isinstance(trial, dict) or not trial:
            raise bad_value(f"enqueue[{i}]", trial, "a non-empty mapping of space keys to values")
        params = {}
        for key, value in trial.items():
            value = _number(value)
            if key not in names:
                raise bad_value(f"enqueue[{i}].{key}", value, f"a key of the space ({', '.join(names)})")
            p = s.param(key)
            if p.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not p.contains(value) or (s.grid and value not in p.grid_values()):
                allowed = p.grid_values() if s.grid or p.type == "categorical" else f"[{p.low}, {p.high}]"
                raise bad_value(f"enqueue[{i}].{key}", value, allowed)
            params[key] = value
        out.append(params)
    return out


def _check_settings(s: Search) -> None:
    def integer(name: str, minimum: int, optional: bool = False) -> None:
        v = getattr(s, name)
        if optional and v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise bad_value(name, v, f"an integer >= {minimum}" + (" or null" if optional else ""))

    for name, minimum in (("n_trials", 1), ("workers", 1), ("ranks", 1), ("heartbeat_interval", 1),
                          ("max_retry", 0), ("max_worker_failures", 0)):
        integer(name, minimum)
    integer("grace_period", 1, optional=True)
    integer("seed", 0, optional=True)
    for name in ("keep_checkpoints", "reset_running"):
        if not isinstance(getattr(s, name), bool):
            raise bad_value(name, getattr(s, name), "true or false")
    if not isinstance(s.poll_seconds, (int, float)) or s.poll_seconds <= 0:
        raise bad_value("poll_seconds", s.poll_seconds, "a positive number of seconds")
    if not isinstance(s.launcher, str) or not s.launcher:
        raise bad_value("launcher", s.launcher, "local, inline or a hydra/launcher option (submitit_local, ...)")
    if s.launcher == "inline" and (s.workers != 1 or s.ranks != 1):
        raise bad_value("workers", s.workers, "1 (with ranks=1) for launcher=inline")
    if s.storage is not None and not isinstance(s.storage, str):
        raise bad_value("storage", s.storage, "an SQLAlchemy URL, journal:<file> or null")
    if s.study is not None and (not isinstance(s.study, str) or not s.study.strip()):
        raise bad_value("study", s.study, "a non-empty name")
    if s.grace_period is not None and s.grace_period <= s.heartbeat_interval:
        raise bad_value("grace_period", s.grace_period, f"more than heartbeat_interval={s.heartbeat_interval}")


def format_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        return _float_text(value)
    text = str(value)
    if text and all(c.isalnum() or c in "_-./:" for c in text) and _yaml_value(text) == text \
            and text.lower() not in ("null", "true", "false", "inf", "nan"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _float_text(v: float) -> str:
    """The shortest exact text: 5e11 rather than 500000000000.0, 0.003 as it is."""
    if not math.isfinite(v) or abs(v) < 1e5:
        return repr(v)
    for digits in range(17):
        text = f"{v:.{digits}e}"
        if float(text) == v:
            mantissa, exponent = text.split("e")
            return f"{mantissa}e{int(exponent)}"
    return repr(v)


# ======================================================================================================
# Composition with Hydra (the project's conf/ and schema, as run.py composes it)
# ======================================================================================================
@contextlib.contextmanager
def hydra_context(conf_dir: str | Path = CONF_DIR) -> Iterator[Any]:
    """Hydra initialised on ``conf_dir`` for the compose API; yields the config loader."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import sweeps.schema  # noqa: F401  (registers the schema and run.py's resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3", job_name="search"):
        yield GlobalHydra.instance().config_loader()


def compose(overrides: Sequence[str], with_hydra: bool = False) -> Any:
    """run.py's config for ``overrides`` (call inside :func:`hydra_context`)."""
    from hydra import compose as hydra_compose

    return hydra_compose("config", overrides=list(overrides), return_hydra_config=with_hydra)


def compose_error(e: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line errors as one line."""
    from hydra.errors import MissingConfigException

    if isinstance(e, OLMoConfigurationError):
        return str(e)
    text = str(e)
    if isinstance(e, MissingConfigException) and "Available options in" in text:
        first = text.splitlines()[0].split(": ", 1)[-1]
        options = [ln.strip() for ln in text.split("Available options in", 1)[1].splitlines()[1:]
                   if ln.startswith("\t")]
        return f"{first}; options: {', '.join(options)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("To append")]
    first = lines[0] if lines else type(e).__name__
    cause = e.__cause__ or e.__context__
    if cause is not None and str(cause).strip():
        first += f": {str(cause).strip().splitlines()[0]}"
    return first


def to_experiment(cfg: Any, world_size: int) -> Any:
    """The composed config -> validated olmo dataclasses (sweeps.schema.Composed), as run.py checks them."""
    from sweeps.driver import check_experiment
    from sweeps.schema import to_configs

    composed = to_configs(cfg)
    check_experiment(composed.experiment, world_size)
    return composed


def budget_flops(experiment: Any) -> float:
    """The FLOPs of a config's whole training budget (as check_experiment computes it, before the data)."""
    from olmo.train.budget import training_budget

    model = experiment.model
    if experiment.data.source != "memmap" or experiment.data.tokenizer.path is None:
        model = model.replace(vocab_size=experiment.data.tokenizer.vocab_size)
    return float(training_budget(model, experiment.train).flops)


# ======================================================================================================
# The plan: everything a worker needs, written by the driver
# ======================================================================================================
@dataclass
class Plan:
    search: dict[str, Any]  # Search as a mapping (space as a list of Param mappings)
    study: str
    storage: str
    study_dir: str
    conf_dir: str
    fixed: list[str]  # overrides of every trial, before its parameters (internal, base, command line, budget)
    run_dir: list[str]  # overrides of every trial, after its parameters (results folder)
    budget_flops: float
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None

    @property
    def spec(self) -> Search:
        d = dict(self.search)
        d["space"] = [Param(**p) for p in d["space"]]
        return Search(**d)

    def write(self) -> Path:
        path = Path(self.study_dir) / PLAN_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2, default=str))
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        return cls(**json.loads(Path(path).read_text()))


def trial_overrides(plan: Plan, spec: Search, params: dict[str, Any], number: int) -> list[str]:
    """The run.py overrides of one trial: fixed, then its parameters, then its own folders."""
    folder = Path(plan.study_dir) / "trials" / str(number)
    return [*plan.fixed, *(spec.param(k).override(v) for k, v in params.items()), *plan.run_dir,
            f"train.save_folder={format_value(str(folder))}"]


def reproduce_overrides(spec: Search, params: dict[str, Any]) -> list[str]:
    """What to give run.py to train a trial again: the search's overrides and the trial's parameters."""
    return [*spec.base, *spec.trial_overrides, *_budget_overrides(spec),
            *(spec.param(k).override(v) for k, v in params.items())]


def _budget_overrides(spec: Search) -> list[str]:
    if spec.flops is None:
        return []
    return [f"train.max_flops={format_value(spec.flops)}", "train.max_steps=null", "train.max_tokens=null"]


# ======================================================================================================
# Optuna: storage, sampler, pruner, retries
# ======================================================================================================
def resolve_storage(value: str | None, results_dir: Path) -> str:
    """``None`` -> sqlite:////<results_dir>/optuna.db; relative sqlite and journal paths made absolute."""
    if not value:
        return "sqlite:///" + str((results_dir / STORAGE_FILE).resolve())
    if value.startswith("journal:"):
        return "journal:" + str(Path(value[len("journal:"):]).expanduser().resolve())
    if value.endswith((".log", ".journal")) and "://" not in value:
        return "journal:" + str(Path(value).expanduser().resolve())
    if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(value[len("sqlite:///"):]).expanduser().resolve())
    if "://" not in value:
        raise bad_value("storage", value, "an SQLAlchemy URL (sqlite:///f.db, postgresql://...) or journal:<file>")
    return value


def open_storage(url: str, spec: Search, create: bool = False) -> Any:
    """The Optuna storage; RDB storages get heartbeats and retry the trials of dead workers."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    kwargs: dict[str, Any] = {
        "engine_kwargs": engine_kwargs,
        "heartbeat_interval": spec.heartbeat_interval,
        "grace_period": spec.grace_period or 2 * spec.heartbeat_interval + 60,
    }
    names = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    stale = "heartbeat_stale_trial_callback"  # Optuna 5; Optuna 4 calls it failed_trial_callback
    retry_key = stale if stale in names else "failed_trial_callback"
    kwargs[retry_key] = RetryTrial(spec.max_retry)
    if "skip_table_creation" in names:
        kwargs["skip_table_creation"] = not create
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are "experimental"
        return optuna.storages.RDBStorage(url, **kwargs)


class RetryTrial:
    """A failed trial runs again with the same parameters, as a new WAITING trial, at most ``max_retry`` times.

    The same contract as Optuna's RetryFailedTrialCallback (system attrs ``failed_trial``: the first trial of the
    chain, ``retry_history``), so ``RetryFailedTrialCallback.retried_trial_number`` works; the dead worker's own
    attributes (worker, pid, MLflow run) are not copied.
    """

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry

    def __call__(self, study: Any, trial: Any) -> None:
        import optuna

        history = [*trial.system_attrs.get(RETRY_HISTORY, []), trial.number]
        if len(history) > self.max_retry:
            log.warning("trial %d failed (%s); not retried: %d retries already", trial.number,
                        trial.user_attrs.get("error") or "its worker died", len(history) - 1)
            return
        system_attrs = {**trial.system_attrs, RETRY_OF: trial.system_attrs.get(RETRY_OF, trial.number),
                        RETRY_HISTORY: history}
        system_attrs.pop("fixed_params", None)
        _end_dead_run(study, trial)
        user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in RUNTIME_ATTRS}
        study.add_trial(optuna.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs=user_attrs, system_attrs=system_attrs,
        ))
        log.warning("trial %d failed (%s): retried with the same parameters", trial.number,
                    trial.user_attrs.get("error") or "its worker died")


def _end_dead_run(study: Any, trial: Any) -> None:
    """The MLflow run of a trial whose worker died ends FAILED (nobody else will end it)."""
    run_id, uri = trial.user_attrs.get("mlflow_run_id"), study.user_attrs.get("mlflow_uri")
    if not run_id or not uri:
        return
    try:
        from olmo.tracking.store import client

        c = client(uri)
        if c.get_run(run_id).info.status == "RUNNING":
            c.set_tag(run_id, "optuna.state", "FAIL")
            c.set_tag(run_id, "error", str(trial.user_attrs.get("error") or "the worker died"))
            c.set_terminated(run_id, status="FAILED")
    except Exception as e:  # noqa: BLE001  (tracking must not stop the retry)
        log.warning("could not end the MLflow run %s of trial %d: %s", run_id, trial.number, e)


def fail_and_retry(study: Any, trial_id: int, max_retry: int, reason: str) -> bool:
    """Mark a RUNNING trial FAIL (if nobody else did) and enqueue its retry; True if this call did."""
    import copy

    import optuna

    storage = study._storage
    try:
        storage.set_trial_user_attr(trial_id, "error", reason)
        changed = storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if changed:
        RetryTrial(max_retry)(study, copy.deepcopy(storage.get_trial(trial_id)))
    return bool(changed)


def fail_stale(study: Any) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def make_sampler(spec: Search, seed_offset: int) -> Any:
    import optuna

    options = {k: v for k, v in spec.sampler.items() if k != "name"}
    seed = options.pop("seed", spec.seed)
    seed = None if seed is None else (int(seed) + seed_offset) % 2**32  # workers must not draw the same points
    name = spec.sampler["name"]
    if name == "tpe":
        options.setdefault("constant_liar", True)  # running trials count as bad: parallel workers spread out
        return _construct("sampler", optuna.samplers.TPESampler, seed=seed, **options)
    if name == "random":
        return _construct("sampler", optuna.samplers.RandomSampler, seed=seed, **options)
    space = {p.name: p.grid_values() for p in spec.space}
    return _construct("sampler", optuna.samplers.GridSampler, space, seed=seed, **options)


def make_pruner(spec: Search) -> Any:
    import optuna

    options = {k: v for k, v in spec.pruner.items() if k != "name"}
    name = spec.pruner["name"]
    if name == "median":
        return _construct("pruner", optuna.pruners.MedianPruner, **options)
    if name == "percentile":
        options.setdefault("percentile", 25.0)
        return _construct("pruner", optuna.pruners.PercentilePruner, **options)
    if name == "hyperband":  # resources are milestone numbers: 1 .. N (the budget)
        options.setdefault("min_resource", 1)
        options.setdefault("max_resource", spec.milestones["per_decade"] * spec.milestones["decades"] + 1)
        return _construct("pruner", optuna.pruners.HyperbandPruner, **options)
    return optuna.pruners.NopPruner()


def _construct(kind: str, cls: type, *args: Any, **options: Any) -> Any:
    allowed = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "args", "kwargs")]
    for key, value in options.items():
        if key not in allowed:
            raise bad_value(f"{kind}.{key}", value, allowed)
    try:
        return cls(*args, **options)
    except (TypeError, ValueError) as e:
        raise OLMoConfigurationError(f"{kind} {cls.__name__}{tuple(options.items())}: {e}") from None


def load_study(plan: Plan, worker_index: int = 0) -> Any:
    import optuna

    spec = plan.spec
    storage = open_storage(plan.storage, spec)
    study = optuna.load_study(study_name=plan.study, storage=storage)
    # The seed of a worker differs from the others' and from the workers of an earlier start of the study (which
    # would otherwise draw the same random points again); one worker on a new study draws from `seed` itself.
    seed_offset = worker_index + 7919 * len(study.get_trials(deepcopy=False))
    return optuna.load_study(study_name=plan.study, storage=storage, sampler=make_sampler(spec, seed_offset),
                             pruner=make_pruner(spec))


@dataclass
class Progress:
    slots: int  # trials of the study that are not retries (each one is one of the n_trials)
    waiting: int
    running: int
    complete: int
    pruned: int
    failed: int
    retried: int = 0  # failed trials that run again as another trial

    def pending(self, n_trials: int) -> int:
        return max(0, n_trials - self.slots) + self.waiting

    def done(self, n_trials: int) -> bool:
        return self.pending(n_trials) == 0 and self.running == 0

    def describe(self) -> str:
        retried = f" ({self.retried} retried)" if self.retried else ""
        return f"{self.complete} complete, {self.pruned} pruned, {self.failed} failed{retried}"


def progress(study: Any) -> Progress:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = {s: 0 for s in TrialState}
    for t in trials:
        count[t.state] += 1
    retried = {n for t in trials for n in t.system_attrs.get(RETRY_HISTORY, [])}
    return Progress(
        slots=sum(1 for t in trials if RETRY_OF not in t.system_attrs), waiting=count[TrialState.WAITING],
        running=count[TrialState.RUNNING], complete=count[TrialState.COMPLETE], pruned=count[TrialState.PRUNED],
        failed=count[TrialState.FAIL], retried=sum(1 for t in trials if t.state == TrialState.FAIL
                                                   and t.number in retried),
    )



# ======================================================================================================
# Preparing a search (driver, before any worker)
# ======================================================================================================
@dataclass
class Prepared:
    spec: Search
    plan: Plan
    study: Any = None
    new_study: bool = False
    launcher_cfg: dict[str, Any] | None = None


def validate(spec: Search) -> tuple[list[str], list[str], float, Any, dict[str, Any] | None]:
    """Compose and validate the base config and every value of the space before any trial starts.

    Returns (fixed overrides, run-dir overrides, the FLOP budget, the base's Composed, the launcher config).
    """
    fixed = [*INTERNAL_OVERRIDES, *spec.base, *spec.trial_overrides, *_budget_overrides(spec)]
    launcher_cfg = _launcher_config(spec)
    if launcher_cfg is not None and spec.ranks > 1:
        launcher_cfg["tasks_per_node"] = spec.ranks
    world_size = spec.ranks
    if launcher_cfg is not None:  # a submitit job: every task is one rank of the trial
        world_size = int(launcher_cfg.get("tasks_per_node") or 1) * int(launcher_cfg.get("nodes") or 1)
    with hydra_context() as loader:
        try:
            base = to_experiment(compose(fixed), world_size)
        except Exception as e:  # noqa: BLE001  (every composition error, one line)
            raise SearchConfigError(f"search {spec.name}: the base config: {compose_error(e)}") from None
        for p in spec.space:
            p.group = bool(loader.repository.group_exists(p.name))
            if p.group and (p.type != "categorical" or not all(isinstance(c, str) for c in p.probe_values())):
                raise SearchConfigError(f"search {spec.name}: space.{p.name} is a config group: its values are "
                                        f"option names ({', '.join(loader.get_group_options(p.name))})")
            for value in p.probe_values():
                _probe(fixed, [p.override(value)], f"{spec.name}: space.{p.name}={format_value(value)}", world_size)
        for i, trial in enumerate(spec.enqueue):
            _probe(fixed, [spec.param(k).override(v) for k, v in trial.items()], f"{spec.name}: enqueue[{i}]",
                   world_size)
    results = Path(base.results_dir).resolve()
    return fixed, [f"results_dir={format_value(str(results))}"], spec.flops or budget_flops(base.experiment), base, \
        launcher_cfg


def _probe(fixed: list[str], extra: list[str], what: str, world_size: int) -> None:
    try:
        to_experiment(compose([*fixed, *extra]), world_size)
    except Exception as e:  # noqa: BLE001
        raise SearchConfigError(f"search {what}: {compose_error(e)}") from None


def _launcher_config(spec: Search) -> dict[str, Any] | None:
    """The hydra/launcher option named by ``launcher=`` (with the hydra.launcher.* overrides), resolved."""
    if spec.launcher in LOCAL_LAUNCHERS:
        return None
    from omegaconf import OmegaConf

    try:
        with hydra_context():
            cfg = compose([*spec.base, *spec.trial_overrides, f"hydra/launcher={spec.launcher}",
                           *spec.launcher_overrides], with_hydra=True)
    except Exception as e:  # noqa: BLE001
        raise SearchConfigError(f"search {spec.name}: launcher={spec.launcher}: {compose_error(e)}") from None
    node = cfg.hydra.launcher
    target = str(node.get("_target_", ""))
    if "submitit" not in target:
        raise SearchConfigError(f"launcher={spec.launcher!r} is invalid; allowed: local, inline or a submitit "
                                f"hydra/launcher option (submitit_local, submitit_slurm, ...), not {target}")
    out: dict[str, Any] = {"_target_": target}
    named = any(o.lstrip("+").startswith("hydra.launcher.name=") for o in spec.launcher_overrides)
    for key in node:
        if key in ("_target_", "submitit_folder") or (key == "name" and not named):
            continue  # the study folder decides where; the job name is search-<study> unless given
        try:
            value = node[key]
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except Exception:  # noqa: BLE001  (interpolations into Hydra's runtime, absent in the compose API)
            continue
    return out


def prepare(spec: Search, dry_run: bool = False) -> Prepared:
    """Validate; create the storage, the study, the MLflow parent run (unless ``dry_run``); write the plan."""
    fixed, run_dir, flops, base, launcher_cfg = validate(spec)
    from olmo.train.pruning import FlopMilestones

    FlopMilestones(flops, **spec.milestones)  # a bad grid fails here, and bad sampler or pruner options:
    make_sampler(spec, 0)
    make_pruner(spec)
    results = Path(base.results_dir).resolve()
    study_name = spec.study_name
    study_dir = results / SEARCHES_SUBDIR / _safe(study_name)
    plan = Plan(
        search={**dataclasses.asdict(spec)}, study=study_name, storage=resolve_storage(spec.storage, results),
        study_dir=str(study_dir), conf_dir=str(CONF_DIR), fixed=fixed, run_dir=run_dir, budget_flops=flops,
    )
    prepared = Prepared(spec, plan, launcher_cfg=launcher_cfg)
    if dry_run:
        return prepared
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(plan.storage, spec, create=True)  # tables created here, once, before any worker
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if study_name in existing and existing[study_name].direction.name.lower() != spec.direction:
        raise SearchConfigError(f"study {study_name!r} in {plan.storage} maximizes/minimizes the other way; "
                                f"set study=<another name>")
    study = optuna.create_study(storage=storage, study_name=study_name, direction=spec.direction,
                                load_if_exists=True, sampler=make_sampler(spec, 0), pruner=make_pruner(spec))
    prepared.study, prepared.new_study = study, study_name not in existing
    if prepared.new_study:
        study.set_user_attr("search", spec.name)
        study.set_user_attr("search_file", spec.path)
        study.set_user_attr("space", [dataclasses.asdict(p) for p in spec.space])
        study.set_user_attr("overrides", reproduce_overrides(spec, {}))
        study.set_user_attr("metric", spec.metric)
        study.set_user_attr("budget_flops", flops)
    for params in spec.enqueue:  # baselines added to the file later are enqueued when the study resumes
        study.enqueue_trial(params, skip_if_exists=True)
    if spec.reset_running:
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            fail_and_retry(study, t._trial_id, spec.max_retry, "reset_running: left RUNNING by an earlier driver")
    _prepare_tracking(prepared, base)
    plan.write()
    return prepared


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _prepare_tracking(prepared: Prepared, base: Any) -> None:
    """The study's MLflow parent run (continued when the study is resumed); its ids go into the plan."""
    if not base.tracking.enabled:
        return
    from olmo.tracking import git_commit, prepare_store, resolve_tracking_uri
    from olmo.tracking.store import client, run_exists

    spec, plan, study = prepared.spec, prepared.plan, prepared.study
    uri = resolve_tracking_uri(base.tracking.uri, base.results_dir)
    experiment_id = prepare_store(uri, base.tracking.experiment)  # the store is created here, once
    c = client(uri)
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent and study.user_attrs.get("mlflow_uri") == uri and run_exists(c, parent):
        c.update_run(parent, status="RUNNING")
    else:
        tags = {
            "sweep_id": plan.study, "search": spec.name, "optuna.study": plan.study, "optuna.storage": plan.storage,
            "optuna.direction": spec.direction, "optuna.metric": spec.metric,
            "optuna.sampler": spec.sampler["name"], "optuna.pruner": spec.pruner["name"],
            "sweep_overrides": " ".join(reproduce_overrides(spec, {})), "git_commit": git_commit() or "",
            "sweep_dir": plan.study_dir, "launcher": spec.launcher, "kind": "search",
        }
        run = c.create_run(experiment_id, run_name=f"search {plan.study}", tags=tags)
        parent = run.info.run_id
        c.log_text(parent, yaml.safe_dump({"space": [dataclasses.asdict(p) for p in spec.space]}, sort_keys=False),
                   "space.yaml")
        study.set_user_attr("mlflow_parent_run_id", parent)
        study.set_user_attr("mlflow_uri", uri)
    c.set_tag(parent, "n_trials", str(spec.n_trials))
    plan.tracking_uri, plan.experiment_id, plan.parent_run_id = uri, experiment_id, parent


# ======================================================================================================
# The worker: trials one after the other (rank 0 talks to Optuna, the other ranks follow)
# ======================================================================================================
class _Stop:
    requested = False


def worker_main(plan_path: str, worker: str, worker_index: int = 0) -> dict[str, Any]:
    """Run trials of the plan's study until none is left; every rank of a multi-rank worker calls this."""
    from olmo.distributed import init_distributed
    from olmo.distributed.env import broadcast_object, shutdown_distributed

    _setup_logging()
    _Stop.requested = False
    plan = Plan.read(plan_path)
    env = init_distributed(None)
    ran = 0
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _request_stop)
    except ValueError:  # not the main thread
        previous = None
    try:
        if not env.is_main:
            while (message := broadcast_object(None)) is not None:
                run_trial(plan, message, trial=None)
                ran += 1
            return {"worker": worker, "trials": ran, "status": "ok"}
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = load_study(plan, worker_index)
        spec = plan.spec
        gate_asks(study, lock_for(plan.storage, plan.study, Path(plan.study_dir) / "ask.lock"),
                  lambda s: progress(s).pending(spec.n_trials))
        objective = Objective(plan, spec, worker)
        while not _Stop.requested:
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[_after_trial(spec)],
                               gc_after_trial=True)
            except NothingToAsk:  # every one of the n_trials is taken (checked and asked under one lock)
                break
            ran += 1
        broadcast_object(None)
        return {"worker": worker, "trials": ran, "status": "interrupted" if _Stop.requested else "ok"}
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        shutdown_distributed()


def _request_stop(signum: int, frame: Any) -> None:
    _Stop.requested = True


def _after_trial(spec: Search) -> Any:
    def callback(study: Any, trial: Any) -> None:
        log.info(trial_line(trial, spec))
        if trial.user_attrs.get("interrupted"):  # stopped by SIGTERM: run again later, from the start
            RetryTrial(spec.max_retry)(study, trial)
            _Stop.requested = True

    return callback


class TrialFailed(RuntimeError):
    pass


class Objective:
    def __init__(self, plan: Plan, spec: Search, worker: str) -> None:
        self.plan, self.spec, self.worker = plan, spec, worker

    def __call__(self, trial: Any) -> float:
        import optuna

        try:
            return self._run(trial)
        except (optuna.TrialPruned, TrialFailed):
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
            raise

    def _run(self, trial: Any) -> float:
        import optuna

        from olmo.distributed.env import broadcast_object

        for key, value in (("worker", self.worker), ("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(key, value)
        params = {p.name: p.suggest(trial, grid=self.spec.grid) for p in self.spec.space}
        message = {"number": trial.number, "params": params,
                   "overrides": trial_overrides(self.plan, self.spec, params, trial.number),
                   "retry_of": trial.storage.get_trial_system_attrs(trial._trial_id).get(RETRY_OF)}
        broadcast_object(message)
        log.info("trial %d: %s", trial.number, " ".join(self.spec.param(k).override(v) for k, v in params.items()))
        outcome, pruning = run_trial(self.plan, message, trial)
        run = _RunTags(self.plan, outcome.run_id if outcome else None)
        if outcome is not None and outcome.run_id:
            trial.set_user_attr("mlflow_run_id", outcome.run_id)
        status = outcome.status if outcome is not None else "failed"
        error = (outcome.error if outcome is not None else None) or ""
        if status == "finished":
            value = pruning.last_eval.get(self.spec.metric) if pruning is not None else None
            if value is None or not math.isfinite(value):
                run.set({"optuna.state": "FAIL"})
                raise TrialFailed(f"no finite {self.spec.metric} at the end of the trial ({value})")
            run.set({"optuna.state": "COMPLETE", "optuna.value": repr(value)})
            return float(value)
        if status == "pruned" or error.startswith("NonFiniteLossError"):
            index, flops = pruning.pruned_at if pruning is not None and pruning.pruned_at else (None, None)
            reason = "non-finite loss" if status != "pruned" else f"milestone {index} ({flops:.3g} FLOPs)"
            if index is not None:
                trial.set_user_attr("pruned_at_milestone", index)
                trial.set_user_attr("pruned_at_flops", flops)
            run.set({"optuna.state": "PRUNED", "optuna.pruned_at": reason})
            raise optuna.TrialPruned(reason)
        if status == "failed":
            trial.set_user_attr("error", error[:2000])
            run.set({"optuna.state": "FAIL"})
            raise TrialFailed(error)
        # preempted (SIGTERM): the worker stops; the trial is retried by the callback above
        trial.set_user_attr("interrupted", True)
        trial.set_user_attr("error", f"stopped ({status}): retried when the study goes on")
        run.set({"optuna.state": "FAIL", "optuna.interrupted": "true"})
        raise TrialFailed(f"trial stopped: {status}")


class _TrialHooks(Callback):
    """As training starts: the trial learns its MLflow run id (so a driver can end the run if the worker dies),
    and a stop asked for (SIGTERM) before the trainer's own handler was installed is passed on to it, so the trial
    stops after its first step instead of training to the end (the Checkpointer stops every rank at the same step).
    """

    name = "optuna_trial"

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def on_train_start(self, trainer: Any) -> None:
        if _Stop.requested and signal.getsignal(signal.SIGTERM) is not _request_stop:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.trial is None:
            return
        for cb in trainer.callbacks:
            run = getattr(cb, "run", None) if getattr(cb, "name", "") == "mlflow" else None
            if run is not None:
                self.trial.set_user_attr("mlflow_run_id", run.run_id)


class _RunTags:
    """Tags of a trial's MLflow child run, set after the run ended (a failure to tag is only a warning)."""

    def __init__(self, plan: Plan, run_id: str | None) -> None:
        self.plan, self.run_id = plan, run_id

    def set(self, tags: dict[str, str]) -> None:
        if not self.run_id or not self.plan.tracking_uri:
            return
        try:
            from olmo.tracking.store import client

            c = client(self.plan.tracking_uri)
            for k, v in tags.items():
                c.set_tag(self.run_id, k, v)
        except Exception as e:  # noqa: BLE001
            log.warning("could not tag MLflow run %s: %s", self.run_id, e)


def run_trial(plan: Plan, message: dict[str, Any], trial: Any) -> tuple[Any, Any]:
    """One trial as one tracked training job (every rank); ``trial`` is the Optuna trial on rank 0, else None."""
    import shutil

    from omegaconf import OmegaConf

    from olmo.tracking import JobContext, run_tracked
    from olmo.train.pruning import FlopMilestones, OptunaPruning

    spec = plan.spec
    number, params = message["number"], message["params"]
    try:
        with hydra_context(plan.conf_dir):
            cfg = compose(message["overrides"])
        composed = to_experiment(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    except Exception as e:  # noqa: BLE001  (validated before the search, but a config can still fail)
        from olmo.tracking import JobOutcome  # every rank fails the same way: none of them trains

        return JobOutcome(status="failed", config_hash="", error=f"config: {compose_error(e)}"), None
    tags = {
        "optuna.study": plan.study, "optuna.trial": str(number), "search": spec.name, "kind": "search_trial",
        "overrides": " ".join(reproduce_overrides(spec, params)),
        **{f"optuna.param.{k}": format_value(v) for k, v in params.items()},
    }
    if message.get("retry_of") is not None:
        tags["optuna.retry_of"] = str(message["retry_of"])
    tracking = composed.tracking if plan.tracking_uri else dataclasses.replace(composed.tracking, enabled=False)
    ctx = JobContext(
        tracking=tracking, results_dir=str(composed.results_dir), tracking_uri=plan.tracking_uri,
        experiment_id=plan.experiment_id, parent_run_id=plan.parent_run_id, sweep_id=plan.study,
        run_name=f"trial {number}: " + " ".join(f"{k}={format_value(v)}" for k, v in params.items()),
        tags=tags, resolved_config=OmegaConf.to_yaml(cfg, resolve=True),
        force=True,  # every trial trains, even when another one (or another study) trained the same config
        raise_on_failure=False,
    )
    milestones = FlopMilestones(plan.budget_flops, **spec.milestones)
    pruning = OptunaPruning(trial, milestones, spec.metric)
    outcome = run_tracked(composed.experiment, ctx, callbacks=[pruning, _TrialHooks(trial)])
    folder = composed.experiment.train.save_folder
    if not spec.keep_checkpoints and folder and trial is not None:  # a retry starts from scratch anyway
        shutil.rmtree(folder, ignore_errors=True)
    return outcome, pruning


# ======================================================================================================
# Launchers: keep `workers` workers running
# ======================================================================================================
@dataclass
class WorkerHandle:
    name: str
    index: int
    handle: Any
    started: float = field(default_factory=time.time)


class LocalLauncher:
    """Worker processes on this machine (``python -m sweeps.search --worker``; torchrun with ranks > 1)."""

    def __init__(self, prepared: Prepared, plan_path: Path) -> None:
        self.spec, self.plan_path = prepared.spec, plan_path
        self.logs = Path(prepared.plan.study_dir) / "workers"
        self.logs.mkdir(parents=True, exist_ok=True)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.threads = max(1, cpus // (self.spec.workers * self.spec.ranks))

    def start(self, name: str, index: int) -> WorkerHandle:
        worker = ["-m", "sweeps.search", "--worker", str(self.plan_path), "--worker-id", name,
                  "--worker-index", str(index)]
        if self.spec.ranks > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(self.spec.ranks),
                   "--master_port", str(_free_port()), *worker]
        else:
            cmd = [sys.executable, *worker]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(self.threads)),
               "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115  (closed with the process)
        # A session of its own: Ctrl-C reaches the driver only, which stops the workers cleanly (SIGTERM).
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
        out.close()
        return WorkerHandle(name, index, proc)

    def poll(self, w: WorkerHandle) -> tuple[bool, str] | None:
        """None while running; else (ok, description)."""
        code = w.handle.poll()
        if code is None:
            return None
        return code == 0, f"exit code {code}" + (f" (signal {-code})" if code < 0 else "")

    def log_path(self, w: WorkerHandle) -> Path:
        return self.logs / f"{w.name}.log"

    def stop(self, workers: list[WorkerHandle], timeout: float = 60.0) -> None:
        for w in workers:
            if w.handle.poll() is None:
                w.handle.send_signal(signal.SIGTERM)
        deadline = time.time() + timeout
        for w in workers:
            try:
                w.handle.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                w.handle.kill()
                w.handle.wait()


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the driver dies, so it stops (and its trial is retried later)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SubmititLauncher:
    """Workers as submitit jobs (local processes or SLURM), configured by a hydra/launcher option."""

    def __init__(self, prepared: Prepared, plan_path: Path) -> None:
        import submitit

        cfg = dict(prepared.launcher_cfg or {})
        target = cfg.pop("_target_")
        cluster = "slurm" if target.endswith("SlurmLauncher") else "local"
        folder = Path(prepared.plan.study_dir) / "submitit" / "%j"
        init = {f"{cluster}_max_num_timeout": cfg.pop("max_num_timeout")} if "max_num_timeout" in cfg else {}
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster, **init)
        # As hydra-submitit-launcher maps its config: shared keys as they are, the others prefixed by the cluster.
        base_keys = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
                     "stderr_to_stdout"}
        params = {k if k in base_keys else f"{cluster}_{k}": v for k, v in cfg.items() if v is not None}
        if cluster == "slurm":
            setup = list(params.get("slurm_setup") or [])
            params["slurm_setup"] = [f"export PYTHONPATH={shlex.quote(str(ROOT))}:${{PYTHONPATH:-}}", *setup]
        params.pop("local_additional_parameters", None)
        params.setdefault("name", f"search-{prepared.plan.study}")
        self.executor.update_parameters(**params)
        self.plan_path = plan_path
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])

    def start(self, name: str, index: int) -> WorkerHandle:
        job = self.executor.submit(worker_main, str(self.plan_path), name, index)
        log.info("worker %s: submitit job %s", name, job.job_id)
        return WorkerHandle(name, index, job)

    def poll(self, w: WorkerHandle) -> tuple[bool, str] | None:
        job = w.handle
        if not job.done():
            return None
        try:
            results = job.results()  # one per task; a job that raised or was killed raises here
        except Exception as e:  # noqa: BLE001
            return False, f"job {job.job_id} {job.state}: {str(e).strip().splitlines()[-1] if str(e) else e}"
        ok = all(isinstance(r, dict) and r.get("status") in ("ok", "interrupted") for r in results)
        return ok, f"job {job.job_id} {job.state}"

    def log_path(self, w: WorkerHandle) -> Path:
        return Path(w.handle.paths.stdout)

    def stop(self, workers: list[WorkerHandle], timeout: float = 60.0) -> None:
        for w in workers:
            if not w.handle.done():
                w.handle.cancel(check=False)


# ======================================================================================================
# The driver
# ======================================================================================================
@dataclass
class SearchResult:
    study: str
    storage: str
    study_dir: str
    progress: Progress
    best_value: float | None = None
    best_trial: int | None = None
    best_params: dict[str, Any] | None = None
    best_overrides: list[str] | None = None
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    status: str = "finished"  # finished | failed | interrupted


def run_search(spec: Search) -> SearchResult:
    """Prepare the study and keep ``workers`` workers busy until ``n_trials`` trials are done."""
    prepared = prepare(spec)
    plan, study = prepared.plan, prepared.study
    p = progress(study)
    log.info("study %s (%s) in %s: %s, %d waiting, %d running; %d trials wanted; budget %.3g FLOPs; results in %s",
             plan.study, "new" if prepared.new_study else "resumed", plan.storage, p.describe(), p.waiting, p.running,
             spec.n_trials, plan.budget_flops, plan.study_dir)
    status = "finished"
    interrupted = False
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if interrupted:  # a second Ctrl-C: stop waiting for the workers
            raise KeyboardInterrupt
        interrupted = True

    if spec.launcher == "inline":
        worker_main(str(Path(plan.study_dir) / PLAN_FILE), "inline", 0)
    else:
        for s in previous:
            signal.signal(s, on_signal)
        try:
            status = _drive(prepared, lambda: interrupted)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
    if interrupted:
        status = "interrupted"
    return finish(prepared, status)


def _drive(prepared: Prepared, interrupted: Any) -> str:
    from optuna.trial import TrialState

    spec, plan, study = prepared.spec, prepared.plan, prepared.study
    plan_path = Path(plan.study_dir) / PLAN_FILE
    launcher = LocalLauncher(prepared, plan_path) if prepared.launcher_cfg is None else \
        SubmititLauncher(prepared, plan_path)
    workers: list[WorkerHandle] = []
    started = failures = 0
    reported = {t.number for t in study.get_trials(deepcopy=False)  # known before this start: not reported again
                if t.state not in (TrialState.RUNNING, TrialState.WAITING)}
    heartbeats = not plan.storage.startswith("journal:")
    token = secrets.token_hex(3)  # worker names are unique across drivers of the same study
    try:
        while True:
            if interrupted():
                log.warning("interrupted: stopping the workers (their trials will be retried when the study resumes)")
                launcher.stop(workers)
                _retry_orphans(study, spec, {w.name for w in workers}, "the driver was interrupted")
                return "interrupted"
            for w in list(workers):
                result = launcher.poll(w)
                if result is None:
                    continue
                workers.remove(w)
                ok, what = result
                if not ok:
                    failures += 1
                    log.warning("worker %s died (%s); see %s", w.name, what, launcher.log_path(w))
                _retry_orphans(study, spec, {w.name}, f"worker {w.name} died ({what})")
            if heartbeats:
                fail_stale(study)
            _report_new(study, reported, spec)
            p = progress(study)
            if p.done(spec.n_trials) and not workers:
                return "finished"
            wanted = min(spec.workers, p.pending(spec.n_trials) + p.running)
            if len(workers) < wanted and p.pending(spec.n_trials) > 0:
                if failures > spec.max_worker_failures:
                    log.error("%d workers died (max_worker_failures=%d): giving up; the study resumes when this "
                              "command runs again", failures, spec.max_worker_failures)
                    launcher.stop(workers)
                    return "failed"
                while len(workers) < wanted:
                    name = f"w{started}-{token}"
                    workers.append(launcher.start(name, started))
                    started += 1
            if not workers and p.running and not heartbeats:  # gone workers' trials (with heartbeats: stale later)
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    fail_and_retry(study, t._trial_id, spec.max_retry, "no worker is running it")
            time.sleep(spec.poll_seconds)
    finally:
        _report_new(study, reported, spec)
        if interrupted():
            launcher.stop(workers, timeout=5.0)


def _retry_orphans(study: Any, spec: Search, names: set[str], reason: str) -> None:
    """RUNNING trials of workers known to be gone: FAIL, and retried with the same parameters."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") in names:
            fail_and_retry(study, t._trial_id, spec.max_retry, reason)


def _report_new(study: Any, reported: set[int], spec: Search) -> None:
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False):
        if t.number in reported or t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        reported.add(t.number)
        log.info(trial_line(t, spec))


def trial_line(t: Any, spec: Search) -> str:
    """One finished trial, e.g. ``trial 3 PRUNED at milestone 7 (3.2e+12 FLOPs)  optim.lr=0.03``."""
    from optuna.trial import TrialState

    names = {p.name for p in spec.space}
    params = " ".join(spec.param(k).override(v) for k, v in t.params.items() if k in names)
    if t.state == TrialState.COMPLETE:
        detail = f"{spec.metric}={t.value:.4f}"
    elif t.state == TrialState.PRUNED:
        m = t.user_attrs.get("pruned_at_milestone")
        detail = f"at milestone {m} ({t.user_attrs.get('pruned_at_flops'):.3g} FLOPs)" if m else "non-finite loss"
    else:
        detail = str(t.user_attrs.get("error", ""))[:200]
    return f"trial {t.number} {t.state.name} {detail}  {params}"


def finish(prepared: Prepared, status: str) -> SearchResult:
    """Summary, best.yaml and the override line of the best trial; the MLflow parent run ends."""
    spec, plan, study = prepared.spec, prepared.plan, prepared.study
    p = progress(study)
    result = SearchResult(study=plan.study, storage=plan.storage, study_dir=plan.study_dir, progress=p,
                          parent_run_id=plan.parent_run_id, tracking_uri=plan.tracking_uri, status=status)
    if status == "finished" and p.complete == 0:
        result.status = "failed"
    try:
        best = study.best_trial
    except ValueError:
        best = None
    if best is not None:
        params = {k: v for k, v in best.params.items() if k in {q.name for q in spec.space}}
        result.best_value, result.best_trial, result.best_params = best.value, best.number, params
        result.best_overrides = reproduce_overrides(spec, params)
        command = "python run.py " + " ".join(shlex.quote(o) for o in result.best_overrides)
        record = {
            "study": plan.study, "storage": plan.storage, "search": spec.name, "metric": spec.metric,
            "direction": spec.direction, "value": best.value, "trial": best.number, "params": params,
            "overrides": result.best_overrides, "command": command,
            "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
            "trials": {"complete": p.complete, "pruned": p.pruned, "failed": p.failed},
        }
        folder = Path(plan.study_dir)
        (folder / BEST_FILE).write_text(yaml.safe_dump(record, sort_keys=False))
        (folder / BEST_LINE_FILE).write_text(" ".join(shlex.quote(o) for o in result.best_overrides) + "\n")
    _end_parent(result, spec)
    return result


def _end_parent(result: SearchResult, spec: Search) -> None:
    if not result.parent_run_id or not result.tracking_uri:
        return
    from olmo.tracking.store import client

    c = client(result.tracking_uri)
    p = result.progress
    tags = {"n_complete": str(p.complete), "n_pruned": str(p.pruned), "n_failed": str(p.failed)}
    if result.best_trial is not None:
        tags.update({"best_trial": str(result.best_trial), "best_value": repr(result.best_value),
                     "best_overrides": " ".join(result.best_overrides or [])})
        c.log_artifact(result.parent_run_id, str(Path(result.study_dir) / BEST_FILE))
    for k, v in tags.items():
        c.set_tag(result.parent_run_id, k, v)
    status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(result.status, "FAILED")
    c.set_terminated(result.parent_run_id, status=status)


def summary(result: SearchResult, spec: Search) -> str:
    p = result.progress
    lines = [f"study {result.study}: {p.describe()} ({p.slots} of {spec.n_trials} trials, retries not counted) "
             f"-- {result.status}"]
    if result.best_trial is not None:
        lines.append(f"best: trial {result.best_trial}, {spec.metric}={result.best_value:.4f}: "
                     + " ".join(f"{k}={format_value(v)}" for k, v in (result.best_params or {}).items()))
        lines.append("reproduce: python run.py " + " ".join(shlex.quote(o) for o in result.best_overrides or []))
        lines.append(f"saved: {Path(result.study_dir) / BEST_FILE}")
    lines.append(f"dashboard: optuna-dashboard {result.storage.replace('journal:', '')}")
    if result.parent_run_id:
        lines.append(f"MLflow: study run {result.parent_run_id} in {result.tracking_uri}; its trials in the MLflow UI: "
                     f"python -m analysis.dashboard --sweep {result.study} --tracking-uri {result.tracking_uri}")
    return "\n".join(lines)


# ======================================================================================================
# Command line
# ======================================================================================================
def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow", "optuna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("searches:", ", ".join(available_searches()))
        return 0
    if argv[0] == "--list":
        for name in available_searches():
            raw = yaml.safe_load((SEARCHES_DIR / f"{name}.yaml").read_text()) or {}
            description = str(raw.get("description") or "").strip().splitlines()
            print(f"{name:<20} {description[0] if description else ''}")
        return 0
    if argv[0] == "--worker":
        opts = dict(zip(argv[2::2], argv[3::2], strict=False))
        result = worker_main(argv[1], opts.get("--worker-id", "w0"), int(opts.get("--worker-index", "0")))
        return 0 if result.get("status") in ("ok", "interrupted") else 1
    _setup_logging()
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    try:
        spec = load_search("", argv)
        if dry_run:
            prepared = prepare(spec, dry_run=True)
            print(yaml.safe_dump({"study": prepared.plan.study, "storage": prepared.plan.storage,
                                  "study_dir": prepared.plan.study_dir, "n_trials": spec.n_trials,
                                  "budget_flops": prepared.plan.budget_flops, "overrides": prepared.plan.fixed,
                                  "space": {p.name: {k: v for k, v in dataclasses.asdict(p).items()
                                                     if v is not None and v is not False and k != "name"}
                                            for p in spec.space},
                                  "sampler": spec.sampler, "pruner": spec.pruner, "enqueue": spec.enqueue},
                                 sort_keys=False), end="")
            return 0
        result = run_search(spec)
    except OLMoConfigurationError as e:
        print(f"Error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except KeyboardInterrupt:
        print("interrupted: the study resumes when this command runs again", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary(result, spec), flush=True)
    return {"finished": 0, "interrupted": EXIT_INTERRUPTED}.get(result.status, EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
