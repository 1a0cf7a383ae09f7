"""Load an experiment, one sweep (by sweep id or parent run) or the latest sweep from MLflow into pandas.

Runs come from one bulk ``search_runs`` (paged); metric histories from one SQL query on the ``metrics`` table when the
store is a database (sqlite, postgresql, mysql, mssql), else from ``MlflowClient.get_metric_history`` per run and
metric (threaded), which works against any tracking server.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis import names
from analysis.errors import AnalysisError, bad_value

SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
LOADERS = ("auto", "sql", "client")
STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")

Series = tuple[np.ndarray, np.ndarray]  # (steps, values), steps ascending


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The explicit URI, else ``$MLFLOW_TRACKING_URI``, else the embedded store ``sqlite:///results/mlflow.db``
    (``results`` being ``$OLMO_SWEEPS_RESULTS`` when set, as for run.py)."""
    if uri or os.environ.get(names.TRACKING_URI_ENV):
        return uri or os.environ[names.TRACKING_URI_ENV]
    results = os.environ.get(names.RESULTS_DIR_ENV)
    return f"sqlite:///{os.path.join(results, 'mlflow.db')}" if results else names.DEFAULT_TRACKING_URI


def _scheme(uri: str) -> str:
    return uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else "file"


def _check_store_exists(uri: str) -> None:
    """MLflow would silently create an empty sqlite file; a missing store is a user error instead."""
    if _scheme(uri) != "sqlite" or ":memory:" in uri:
        return
    if not os.path.exists(_sqlite_path(uri)):
        raise bad_value(
            "tracking_uri", uri, "an existing store: run a sweep first, or pass --tracking-uri / set "
            f"{names.TRACKING_URI_ENV}", "does not exist"
        )


@dataclass
class Sweep:
    """The runs of a sweep and their metric histories.

    ``runs``: one row per run, indexed by run id: ``experiment_id``, ``run_name``, ``status``, ``start_time``,
    ``end_time``, ``parent_run_id``, ``sweep_id``, ``seed``, ``variant``, one column per axis in ``axes``, and
    ``tags.<key>`` / ``params.<key>`` columns for everything else.
    ``series[key][run_id] = (steps, values)`` for each loaded metric (NaN stays NaN; a step logged twice keeps
    the latest value).
    """

    runs: pd.DataFrame
    series: dict[str, dict[str, Series]]
    axes: list[str]
    fixed_axes: dict[str, str]
    available_metrics: list[str]
    tracking_uri: str
    experiment_ids: list[str]
    parent_run_id: str | None = None
    sweep_id: str | None = None
    target: str = ""
    dropped: list[str] = field(default_factory=list)  # runs left out: no train/flops logged
    loader: Callable[[Sequence[str]], dict[str, dict[str, Series]]] | None = field(default=None, repr=False)

    @property
    def run_ids(self) -> list[str]:
        return list(self.runs.index)

    @property
    def variants(self) -> list[str]:
        return sorted(self.runs["variant"].unique())

    def ensure_metrics(self, keys: Iterable[str]) -> None:
        """Load the histories of ``keys`` not loaded yet (each key must be in ``available_metrics``)."""
        for key in keys:
            if key not in self.available_metrics:
                raise bad_value("metric", key, self.available_metrics, "is not logged by these runs")
        missing = [k for k in keys if k not in self.series]
        if missing:
            if self.loader is None:
                raise AnalysisError(f"metric={missing[0]!r} is not loaded and this sweep has no loader")
            self.series.update(self.loader(missing))

    def metric_frame(self, keys: Iterable[str] | None = None) -> pd.DataFrame:
        """The loaded histories as one long frame: ``run_id, key, step, value``."""
        parts = []
        for key in keys or sorted(self.series):
            for run_id, (steps, values) in self.series.get(key, {}).items():
                parts.append(pd.DataFrame({"run_id": run_id, "key": key, "step": steps, "value": values}))
        if not parts:
            return pd.DataFrame({"run_id": [], "key": [], "step": [], "value": []})
        return pd.concat(parts, ignore_index=True)

    def curve(self, run_id: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(flops, values)`` of one run's metric: each value joined by step to ``train/flops`` at that step.

        A step with no ``train/flops`` of its own takes it interpolated between the neighbouring logged steps
        (FLOPs grow linearly with steps); steps outside the logged FLOPs are dropped.
        """
        self.ensure_metrics([key, names.TRAIN_FLOPS])
        steps, values = self.series[key].get(run_id, (np.empty(0, np.int64), np.empty(0)))
        fsteps, fvalues = self.series[names.TRAIN_FLOPS].get(run_id, (np.empty(0, np.int64), np.empty(0)))
        if len(steps) == 0 or len(fsteps) == 0:
            return np.empty(0), np.empty(0)
        flops = np.interp(steps, fsteps, fvalues, left=np.nan, right=np.nan)
        keep = np.isfinite(flops)
        return flops[keep], values[keep]

    def history(self, key: str) -> pd.DataFrame:
        """One metric of every run with its FLOPs: ``run_id, step, flops, value`` (joined by step)."""
        self.ensure_metrics([key, names.TRAIN_FLOPS])
        parts = []
        for run_id in self.run_ids:
            steps, values = self.series[key].get(run_id, (np.empty(0, np.int64), np.empty(0)))
            fsteps, fvalues = self.series[names.TRAIN_FLOPS].get(run_id, (np.empty(0, np.int64), np.empty(0)))
            flops = np.interp(steps, fsteps, fvalues, left=np.nan, right=np.nan) if len(fsteps) else steps * np.nan
            parts.append(pd.DataFrame({"run_id": run_id, "step": steps, "flops": flops, "value": values}))
        return pd.concat(parts, ignore_index=True)


# ----------------------------------------------------------------------------------------------------- run search


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _search(client, experiment_ids: list[str], filter_string: str = "", order_by: list[str] | None = None,
            max_runs: int | None = None) -> list[Any]:
    from mlflow.entities import ViewType

    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
            max_results=min(1000, max_runs or 1000), order_by=order_by, page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token or (max_runs is not None and len(runs) >= max_runs):
            return runs


def _all_experiment_ids(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def _experiment(client, experiment: str):
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(str(experiment))
    if exp is None and str(experiment).isdigit():
        try:
            exp = client.get_experiment(str(experiment))
        except MlflowException:
            exp = None
    if exp is None:
        raise bad_value("experiment", experiment, sorted(e.name for e in client.search_experiments()),
                        "is not in the store")
    return exp


def _tag_filter(tag: str, value: str) -> str:
    return f"tags.`{tag}` = '{value}'"


def _find_runs(client, uri: str, experiment, sweep_id, parent_run_id, sweep_tag: str):
    """Returns (runs, experiment_ids, parent_run_id, sweep_id, target description)."""
    from mlflow.exceptions import MlflowException

    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
        except MlflowException:
            raise bad_value("parent_run", parent_run_id, "the run id of a sweep's parent run",
                            "is not a run in the store") from None
        exp_ids = [parent.info.experiment_id]
        runs = []
        for tag in names.SWEEP_RUN_TAGS:
            runs = runs or _search(client, exp_ids, _tag_filter(tag, parent_run_id))
        if not runs:
            raise bad_value("parent_run", parent_run_id, "the parent run of a sweep (one with child runs)",
                            "has no child runs")
        sweep = parent.data.tags.get(sweep_tag)
        return runs, exp_ids, parent_run_id, sweep, f"sweep {sweep}" if sweep else f"parent run {parent_run_id}"

    exp_ids = [_experiment(client, experiment).experiment_id] if experiment else _all_experiment_ids(client)
    if sweep_id:
        runs = _search(client, exp_ids, _tag_filter(sweep_tag, sweep_id))
        if not runs:
            known = sorted({r.data.tags[sweep_tag] for r in _search(client, exp_ids, max_runs=5000)
                            if sweep_tag in r.data.tags})
            raise bad_value("sweep", sweep_id, known, "is not in the store")
        parents = {names.sweep_run_of(r.data.tags) for r in runs} - {None}
        parent = next(iter(parents)) if len(parents) == 1 else None
        return runs, exp_ids, parent, sweep_id, f"sweep {sweep_id}"

    if experiment:
        runs = _search(client, exp_ids)
        if not runs:
            raise bad_value("experiment", experiment, "an experiment with logged runs", "has no runs")
        exp = client.get_experiment(exp_ids[0])
        parents = {names.sweep_run_of(r.data.tags) for r in runs} - {None}
        parent = next(iter(parents)) if len(parents) == 1 else None
        return runs, exp_ids, parent, None, f"experiment {exp.name}"

    # No target: the latest sweep, i.e. the sweep run of the most recently started job run.
    latest = [r for tag in names.SWEEP_RUN_TAGS
              for r in _search(client, exp_ids, f"tags.`{tag}` LIKE '%'", ["attributes.start_time DESC"], 1)]
    if not latest:
        raise bad_value("target", None, "--experiment, --sweep or --parent-run (the store holds no sweep)",
                        "is missing")
    newest = max(latest, key=lambda r: r.info.start_time)
    return _find_runs(client, uri, None, None, names.sweep_run_of(newest.data.tags), sweep_tag)


# ----------------------------------------------------------------------------------------------------- metrics


def _split_rows(run_ids: Sequence[str], keys: Sequence[str], steps: np.ndarray, values: np.ndarray,
                timestamps: np.ndarray | None) -> dict[str, dict[str, Series]]:
    """Rows -> series[key][run] sorted by step; for a step logged twice the latest timestamp wins (without
    timestamps, the rows must already be in (run, key, step, timestamp) order)."""
    out: dict[str, dict[str, Series]] = {}
    if len(run_ids) == 0:
        return out
    run_codes, run_names = pd.factorize(np.asarray(run_ids, dtype=object))
    key_codes, key_names = pd.factorize(np.asarray(keys, dtype=object))
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=float)
    if timestamps is not None:
        order = np.lexsort((np.asarray(timestamps, dtype=np.int64), steps, key_codes, run_codes))
        run_codes, key_codes, steps, values = run_codes[order], key_codes[order], steps[order], values[order]
    group = run_codes.astype(np.int64) * (len(key_names) + 1) + key_codes
    last = np.ones(len(group), dtype=bool)  # the last row of each (run, key, step)
    last[:-1] = (group[1:] != group[:-1]) | (steps[1:] != steps[:-1])
    group, steps, values = group[last], steps[last], values[last]
    boundary = np.flatnonzero(group[1:] != group[:-1]) + 1
    for start, end in zip(np.r_[0, boundary], np.r_[boundary, len(group)], strict=True):
        run, key = divmod(int(group[start]), len(key_names) + 1)
        out.setdefault(str(key_names[key]), {})[str(run_names[run])] = (steps[start:end], values[start:end])
    return out


def _sqlite_path(uri: str) -> str:
    """sqlite:///rel -> rel, sqlite:////abs -> /abs."""
    path = uri.split("://", 1)[1]
    return path[1:] if path.startswith("/") else path


def load_metrics_sql(uri: str, run_ids: Sequence[str], keys: Sequence[str], chunk: int = 500):
    """All histories of ``keys`` for ``run_ids`` with one SQL query per ``chunk`` runs on MLflow's ``metrics`` table
    (sqlite through the standard library, read-only; other databases through SQLAlchemy)."""
    columns = "run_uuid, key, step, value, is_nan"
    order = " ORDER BY run_uuid, key, step, timestamp"
    rows: list[Any] = []
    if _scheme(uri) == "sqlite":
        import sqlite3

        con = sqlite3.connect(f"file:{_sqlite_path(uri)}?mode=ro", uri=True)
        try:
            for i in range(0, len(run_ids), chunk):
                part = list(run_ids[i:i + chunk])
                sql = (f"SELECT {columns} FROM metrics WHERE run_uuid IN ({','.join('?' * len(part))}) "
                       f"AND key IN ({','.join('?' * len(keys))}){order}")
                rows.extend(con.execute(sql, [*part, *keys]).fetchall())
        finally:
            con.close()
    else:
        from sqlalchemy import bindparam, create_engine, text

        stmt = text(f"SELECT {columns} FROM metrics WHERE run_uuid IN :runs AND key IN :keys{order}").bindparams(
            bindparam("runs", expanding=True), bindparam("keys", expanding=True))
        engine = create_engine(uri)
        try:
            with engine.connect() as conn:
                for i in range(0, len(run_ids), chunk):
                    part = list(run_ids[i:i + chunk])
                    rows.extend(tuple(r) for r in conn.execute(stmt, {"runs": part, "keys": list(keys)}))
        finally:
            engine.dispose()
    if not rows:
        return {}
    frame = pd.DataFrame.from_records(rows, columns=["run", "key", "step", "value", "is_nan"])
    values = frame["value"].to_numpy(dtype=float, copy=True)
    values[frame["is_nan"].to_numpy(dtype=bool)] = np.nan
    return _split_rows(frame["run"].to_numpy(), frame["key"].to_numpy(), frame["step"].to_numpy(), values, None)


def load_metrics_client(uri: str, run_ids: Sequence[str], keys: Sequence[str], threads: int = 8):
    """All histories through ``MlflowClient.get_metric_history`` (one call per run and metric, threaded)."""
    client = _client(uri)
    jobs = [(r, k) for r in run_ids for k in keys]

    def fetch(job):
        return job, client.get_metric_history(*job)

    cols: dict[str, list] = {"r": [], "k": [], "s": [], "v": [], "t": []}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for (run_id, key), history in pool.map(fetch, jobs):
            for m in history:
                cols["r"].append(run_id)
                cols["k"].append(key)
                cols["s"].append(m.step)
                cols["v"].append(m.value)
                cols["t"].append(m.timestamp)
    return _split_rows(cols["r"], cols["k"], np.asarray(cols["s"], dtype=np.int64), np.asarray(cols["v"], dtype=float),
                       np.asarray(cols["t"], dtype=np.int64))


def metrics_loader(uri: str, run_ids: Sequence[str], loader: str = "auto"):
    """A function ``keys -> series`` for these runs, by the fastest path the store allows."""
    if loader not in LOADERS:
        raise bad_value("loader", loader, LOADERS)
    use_sql = loader == "sql" or (loader == "auto" and _scheme(uri) in SQL_SCHEMES)
    if use_sql and _scheme(uri) not in SQL_SCHEMES:
        raise bad_value("loader", loader, "'client' for a tracking server or file store", f"cannot read {uri}")
    run_ids = list(run_ids)

    def load(keys: Sequence[str]) -> dict[str, dict[str, Series]]:
        series = (load_metrics_sql if use_sql else load_metrics_client)(uri, run_ids, list(keys))
        for key in keys:
            series.setdefault(key, {})
        return series

    return load


# ----------------------------------------------------------------------------------------------------- runs frame


def _axis_tags(tag_keys: set[str], axes: Sequence[str] | None) -> dict[str, str]:
    """axis name -> tag key."""
    if axes is None:
        found = {a: a for a in names.AXIS_TAGS if a in tag_keys}
        prefix = names.AXIS_TAG_PREFIX
        found.update({k[len(prefix):]: k for k in sorted(tag_keys) if k.startswith(prefix)})
        return found
    out = {}
    for axis in axes:
        if axis in tag_keys:
            out[axis] = axis
        elif names.AXIS_TAG_PREFIX + axis in tag_keys:
            out[axis] = names.AXIS_TAG_PREFIX + axis
        else:
            raise bad_value("axes", axis, sorted(k for k in tag_keys if not k.startswith("mlflow.")),
                            "is not a tag of these runs")
    return out


def _seed(tags: dict[str, str], params: dict[str, str], seed_key: str | None) -> str | None:
    if seed_key:
        return tags.get(seed_key, params.get(seed_key))
    if names.TAG_SEED in tags:
        return tags[names.TAG_SEED]
    for p in names.SEED_PARAMS:
        if p in params:
            return params[p]
    return None


def _swept_params(frame: pd.DataFrame, axes: list[str]) -> list[str]:
    """Params that vary across the runs, are no seed and no run-specific path, and are not implied by the axes."""
    seed_params = set(names.SEED_PARAMS)
    found: list[str] = []
    for column in sorted(c for c in frame.columns if c.startswith("params.")):
        param = column[len("params."):]
        if param in seed_params or param in names.NON_CONFIG_PARAMS or param.startswith(names.NON_CONFIG_PREFIXES):
            continue
        values = frame[column].fillna("-").astype(str)
        if values.nunique() < 2:
            continue
        keys = axes + found
        by = [(frame[k] if k in frame else frame[f"params.{k}"]).fillna("-").astype(str) for k in keys]
        if keys and values.groupby(by).nunique().max() <= 1:
            continue  # implied by the axes (e.g. model.positional behind the pos tag)
        found.append(param)
    return found


def _runs_frame(runs: list[Any], axes: Sequence[str] | None, seed_key: str | None, sweep_tag: str):
    tag_keys = set().union(*(r.data.tags.keys() for r in runs))
    axis_tags = _axis_tags(tag_keys, axes)
    rows = []
    for r in runs:
        tags, params = r.data.tags, r.data.params
        row = {
            "run_id": r.info.run_id,
            "experiment_id": r.info.experiment_id,
            "run_name": r.info.run_name or tags.get(names.TAG_RUN_NAME, r.info.run_id),
            "status": r.info.status,
            "start_time": r.info.start_time,
            "end_time": r.info.end_time,
            "parent_run_id": names.sweep_run_of(tags),
            "sweep_id": tags.get(sweep_tag),
            "seed": _seed(tags, params, seed_key),
        }
        for axis, tag in axis_tags.items():
            row[axis] = tags.get(tag, "-")
        row.update({f"tags.{k}": v for k, v in tags.items()})
        row.update({f"params.{k}": v for k, v in params.items()})
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("run_id")
    if axes is None:
        for param in _swept_params(frame, list(axis_tags)):
            axis_tags[param] = f"params.{param}"
            frame[param] = frame[f"params.{param}"].fillna("-").astype(str)
    seeds = frame["seed"]
    if seeds.notna().all() and seeds.astype(str).str.fullmatch(r"-?\d+").all():
        frame["seed"] = seeds.astype(int)
    varying = [a for a in axis_tags if frame[a].nunique() > 1]
    fixed = {a: str(frame[a].iloc[0]) for a in axis_tags if a not in varying}
    if varying:
        frame["variant"] = frame[varying].astype(str).apply(lambda row: ",".join(f"{a}={v}" for a, v in row.items()),
                                                            axis=1)
    else:
        frame["variant"] = frame["run_name"].astype(str)
    return frame, varying, fixed


def load_sweep(
    tracking_uri: str | None = None,
    *,
    experiment: str | None = None,
    sweep_id: str | None = None,
    parent_run_id: str | None = None,
    axes: Sequence[str] | None = None,
    seed_key: str | None = None,
    sweep_tag: str = names.TAG_SWEEP_ID,
    metrics: Sequence[str] = (names.TRAIN_LOSS, names.EVAL_LOSS),
    loader: str = "auto",
    statuses: Sequence[str] | None = None,
) -> Sweep:
    """Load one sweep (``sweep_id`` or ``parent_run_id``), a whole ``experiment`` (name or id), or with none of
    them the latest sweep in the store.

    Parent runs are left out; so are runs that never logged ``train/flops``. ``axes`` names the axis tags (default:
    those of :data:`analysis.names.AXIS_TAGS` and ``axis.*`` tags present); the ones that vary name the variants
    (``pos=rope,norm=rms``), the others are reported as fixed. ``metrics`` are loaded now (those logged), others on
    demand. ``loader``: ``auto`` (SQL for a database store, else the client), ``sql`` or ``client``.
    ``statuses``: keep only runs in these MLflow states (e.g. ``["FINISHED"]``; default: all, so a run that stopped
    early lowers the shared budget: the report lists every run's FLOPs and status).
    """
    uri = resolve_tracking_uri(tracking_uri)
    _check_store_exists(uri)
    client = _client(uri)
    runs, exp_ids, parent, sweep, target = _find_runs(client, uri, experiment, sweep_id, parent_run_id, sweep_tag)
    parents = {names.sweep_run_of(r.data.tags) for r in runs}
    runs = [r for r in runs if r.info.run_id not in parents]
    if statuses:
        allowed = {s.upper() for s in statuses}
        unknown = sorted(allowed - set(STATUSES))
        if unknown:
            raise bad_value("status", unknown[0], STATUSES)
        runs = [r for r in runs if r.info.status in allowed]
    dropped = [r.info.run_id for r in runs if names.TRAIN_FLOPS not in r.data.metrics]
    runs = [r for r in runs if names.TRAIN_FLOPS in r.data.metrics]
    if not runs:
        field_, value = (("parent_run", parent_run_id) if parent_run_id else ("sweep", sweep_id) if sweep_id
                         else ("experiment", experiment) if experiment else ("target", target))
        raise bad_value(field_, value, f"runs that log {names.TRAIN_FLOPS!r} with their losses",
                        f"has no runs with {names.TRAIN_FLOPS!r}")
    frame, varying, fixed = _runs_frame(runs, axes, seed_key, sweep_tag)
    exp_ids = sorted({r.info.experiment_id for r in runs}, key=lambda e: (len(e), e))
    available = sorted(set().union(*(r.data.metrics.keys() for r in runs)))
    load = metrics_loader(uri, list(frame.index), loader)
    wanted = [names.TRAIN_FLOPS] + [k for k in metrics if k in available and k != names.TRAIN_FLOPS]
    return Sweep(
        runs=frame, series=load(wanted), axes=varying, fixed_axes=fixed, available_metrics=available,
        tracking_uri=uri, experiment_ids=exp_ids, parent_run_id=parent, sweep_id=sweep, target=target, loader=load,
        dropped=dropped,
    )
