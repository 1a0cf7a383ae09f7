"""Open a sweep in the MLflow dashboard: ``python -m analysis.dashboard [--sweep ID]``.

Starts ``mlflow ui`` on the store (or reuses the one running for it), makes sure the sweep has its saved view
(see ``olmo.tracking.ui``: its job runs, all visible, loss charts against ``train/pflops``) and prints the URL of
the sweep's runs in chart view; opens it where a desktop browser exists. The UI keeps running in the background;
``--stop`` stops it.
"""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from analysis import names
from analysis.errors import AnalysisError, bad_value
from analysis.load import _check_store_exists, resolve_tracking_uri
from olmo.errors import OLMoConfigurationError
from olmo.tracking.ui import TAG_VARIANT, VIEW_TAG_PREFIX, save_sweep_view, sweep_url, view_key
from olmo.tracking.ui_server import ensure_ui, stop_ui


@dataclass
class SweepTarget:
    sweep_id: str
    experiment_id: str
    job_run_ids: list[str]
    group_seeds: bool


def find_sweep(c: Any, sweep_id: str | None) -> SweepTarget:
    """The sweep ``sweep_id`` (default: the one whose job run started last) and its job runs."""
    exp_ids = [e.experiment_id for e in c.search_experiments()]
    if not exp_ids:
        raise bad_value("tracking_uri", None, "a store with a sweep in it", "holds no experiment")
    if sweep_id is None:
        latest = [r for tag in names.SWEEP_RUN_TAGS
                  for r in c.search_runs(exp_ids, f"tags.`{tag}` LIKE '%'", order_by=["attributes.start_time DESC"],
                                         max_results=1)]
        if not latest:
            raise bad_value("sweep", None, "--sweep ID (the store holds no sweep: run `python run.py -m ...`)",
                            "is missing")
        newest = max(latest, key=lambda r: r.info.start_time)
        sweep_id = newest.data.tags.get(names.TAG_SWEEP_ID)
        if not sweep_id:
            raise bad_value("sweep", None, "--sweep ID", "cannot be found from the latest run")
    runs = c.search_runs(exp_ids, f"tags.{names.TAG_SWEEP_ID} = '{sweep_id}'", max_results=10000)
    jobs = [r for r in runs if names.sweep_run_of(r.data.tags)]
    if not jobs:
        known = sorted({r.data.tags[names.TAG_SWEEP_ID] for r in c.search_runs(exp_ids, max_results=2000)
                        if names.TAG_SWEEP_ID in r.data.tags})
        raise bad_value("sweep", sweep_id, known or "a sweep id of this store (it holds none)", "has no job runs")
    variants = [r.data.tags.get(TAG_VARIANT) for r in jobs]
    group_seeds = None not in variants and len(set(variants)) < len(variants)
    return SweepTarget(sweep_id, jobs[0].info.experiment_id, [r.info.run_id for r in jobs], group_seeds)


def ensure_view(c: Any, target: SweepTarget) -> str:
    """The sweep's saved view, written now where the sweep has none (a sweep logged before views existed,
    whose job runs may be nested under its run: then the view lists them by id)."""
    key = view_key(target.sweep_id)
    if VIEW_TAG_PREFIX + key in c.get_experiment(target.experiment_id).tags:
        return key
    return save_sweep_view(c, target.experiment_id, target.sweep_id, target.job_run_ids, target.group_seeds)


def _has_desktop_browser() -> bool:
    """webbrowser on a headless server would start a text browser in this terminal: only where a display is."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("BROWSER"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.dashboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow store (default: ${names.TRACKING_URI_ENV}, else {names.DEFAULT_TRACKING_URI})")
    p.add_argument("--sweep", dest="sweep_id", help="sweep id (default: the latest sweep of the store)")
    p.add_argument("--port", type=int, default=None, help="port of a new `mlflow ui` (default 5000, else a free one)")
    p.add_argument("--no-open", dest="open_browser", action="store_false", help="print the URL only")
    p.add_argument("--stop", action="store_true", help="stop the `mlflow ui` started for this store")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from mlflow import MlflowClient

    args = build_parser().parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri)
    if args.stop:
        print("mlflow ui stopped" if stop_ui(uri) else f"no mlflow ui was running for {uri}")
        return 0
    try:
        _check_store_exists(uri)
        c = MlflowClient(tracking_uri=uri)
        target = find_sweep(c, args.sweep_id)
        key = ensure_view(c, target)
        server = ensure_ui(uri, args.port)
    except (AnalysisError, OLMoConfigurationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    url = sweep_url(server.url, target.experiment_id, key)
    if server.started:
        print(f"started mlflow ui on {uri} at {server.url} (pid {server.pid}, log {server.log}); "
              f"stop it with: python -m analysis.dashboard --stop")
    else:
        print(f"mlflow ui of {uri}: {server.url}")
    print(f"sweep {target.sweep_id} ({len(target.job_run_ids)} runs): {url}", flush=True)
    if args.open_browser and _has_desktop_browser():
        webbrowser.open(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
