"""The MLflow dashboard of a real sweep, as a user sees it in Chromium.

A real ``run.py -m`` sweep writes the store; the command the sweep prints (``python -m analysis.dashboard``)
starts ``mlflow ui`` on it; the URL the sweep prints must open on the sweep's runs, all visible, in chart view,
with one loss line per run against ``train/pflops``; the seeds of one config group into one line with a band.
The screenshot of the chart view is the README's image.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from browser_util import chromium_page, free_port, require_chromium
from mlflow import MlflowClient

from olmo.tracking import sqlite_uri

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "images" / "dashboard.png"
pytestmark = pytest.mark.slow
LOAD_TIMEOUT_MS = 120_000  # a cold `mlflow ui` on 2 busy cores: its first pages take a while

# For each chart card: its title, its text (the legend), the x-axis title, the lines (traces drawing points, by
# name: MLflow adds a point-less trace per line for hover highlighting) and the bands (filled traces: the min-max
# range of a group of runs).
CHARTS_JS = """() => Array.from(document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]'))
  .map(card => {
    const plot = card.querySelector('.js-plotly-plot');
    if (!plot) return null;
    const traces = Array.from(plot.querySelectorAll('g.trace.scatter')).map(t => ({
      name: (t.__data__ && t.__data__[0] && t.__data__[0].trace) ? t.__data__[0].trace.name : null,
      points: t.querySelectorAll('path.point').length, filled: t.querySelectorAll('path.js-fill').length > 0}));
    return {title: card.innerText.split('\\n')[0], text: card.innerText,
            x: (plot.querySelector('.xtitle') || {}).textContent || '',
            lines: traces.filter(t => t.points > 0 && !t.filled).map(t => t.name),
            bands: traces.filter(t => t.filled).length};
  }).filter(c => c !== null)"""


def sweep(tmp_path: Path, data_cache: str, *overrides: str) -> tuple[str, subprocess.CompletedProcess]:
    """Run a smoke sweep into ``tmp_path/results``; returns the store's URI and the finished process."""
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "train=smoke", f"results_dir={tmp_path / 'results'}",
           *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=env_for(tmp_path, data_cache))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return sqlite_uri(tmp_path / "results" / "mlflow.db"), proc


def env_for(tmp_path: Path, data_cache: str) -> dict[str, str]:
    env = {**os.environ, "OLMO_SWEEPS_CACHE": data_cache, "OMP_NUM_THREADS": "1",
           "OLMO_MLFLOW_UI_STATE": str(tmp_path / "ui-state")}  # this test's UIs only
    for key in ("MLFLOW_TRACKING_URI", "OLMO_MLFLOW_UI_URL", "DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        env.pop(key, None)
    return env


def printed_dashboard(stdout: str) -> tuple[list[str], str]:
    """The dashboard command and the URL that the sweep printed at its end."""
    command = re.findall(r"^dashboard: (python -m analysis\.dashboard .+)$", stdout, re.M)
    url = re.findall(r"^\s+then open (http://\S+)$", stdout, re.M)
    assert command and url, f"the sweep printed no dashboard command and URL:\n{stdout[-2000:]}"
    return shlex.split(command[-1]), url[-1]


def dashboard(args: list[str], tmp_path: Path, data_cache: str) -> str:
    """Run ``python -m analysis.dashboard`` as printed (``python`` being this interpreter); its output."""
    assert args[:3] == ["python", "-m", "analysis.dashboard"]
    proc = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env_for(tmp_path, data_cache))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def url_in(output: str) -> str:
    found = re.findall(r"^sweep \S+ \(\d+ runs\): (http://\S+)$", output, re.M)
    assert found, f"the dashboard printed no sweep URL:\n{output}"
    return found[-1]


def without_address(url: str) -> str:
    """The URL less its scheme, host and port (the sweep prints MLflow's default port; the UI may use another)."""
    return urllib.parse.urlsplit(url)._replace(scheme="", netloc="").geturl()


def sweep_id_in(url: str) -> str:
    return re.search(r"viewStateShareKey=sweep-([^&]+)", url).group(1)


def job_runs(uri: str) -> list[Any]:
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("olmo-sweeps")
    return [r for r in c.search_runs([exp.experiment_id]) if "sweep_run_id" in r.data.tags]


def loss_charts(page: Any, n_lines: int) -> list[dict]:
    """The loss charts once each draws ``n_lines`` lines (charts render lazily, after the runs load)."""
    page.wait_for_function(
        f"() => ({CHARTS_JS})().filter(c => /loss/.test(c.title) && c.lines.length >= {n_lines}).length >= 2",
        timeout=LOAD_TIMEOUT_MS)
    return [c for c in page.evaluate(CHARTS_JS) if "loss" in c["title"]]


def close_assistant(page: Any) -> None:
    """MLflow 3.17 opens its "Assistant" side panel on first visit; it hides half the charts in the screenshot."""
    close = page.locator("button[aria-label='Close']")
    if close.count():
        close.first.click()


def stop_dashboard(uri: str, tmp_path: Path, data_cache: str) -> None:
    out = dashboard(["python", "-m", "analysis.dashboard", "--tracking-uri", uri, "--stop"], tmp_path, data_cache)
    assert "mlflow ui stopped" in out


def pid_in(output: str) -> int:
    found = re.search(r"\(pid (\d+),", output)
    assert found, output
    return int(found.group(1))


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_sweeps_printed_url_opens_its_runs_in_chart_view_one_loss_line_per_run(tmp_path, data_cache):
    require_chromium()
    from playwright.sync_api import expect

    uri, proc = sweep(tmp_path, data_cache, "attention=mha,gqa", "pos=rope,alibi")
    command, printed_url = printed_dashboard(proc.stdout)
    runs = job_runs(uri)
    names = sorted(r.info.run_name for r in runs)
    assert names == ["gqa-alibi-s0", "gqa-rope-s0", "mha-alibi-s0", "mha-rope-s0"]  # named from the axis values
    assert len({r.data.tags["mlflow.runColor"] for r in runs}) == 4  # four distinct line colours

    out = dashboard([*command, "--no-open", "--port", str(free_port())], tmp_path, data_cache)
    assert "started mlflow ui" in out, out
    pgid = pid_in(out)
    try:
        url = url_in(out)
        assert without_address(url) == without_address(printed_url)  # the sweep printed the page the UI serves
        with chromium_page() as page:
            page.goto(url)
            page.get_by_text("4 matching runs").wait_for(timeout=LOAD_TIMEOUT_MS)
            for name in names:  # every job run listed and visible, none nested under the sweep's run
                expect(page.get_by_role("link", name=name, exact=True)).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            expect(page.get_by_text(f"sweep {sweep_id_in(url)}").first).to_be_visible()  # the saved view's name
            charts = loss_charts(page, len(names))
            assert {c["title"] for c in charts} == {"eval/loss", "train/loss"}, charts
            for chart in charts:
                assert sorted(chart["lines"]) == names and chart["bands"] == 0, chart  # one line per run
                assert chart["x"] == "train/pflops", chart
            close_assistant(page)
            page.wait_for_timeout(500)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        again = dashboard([*command, "--no-open"], tmp_path, data_cache)
        assert "started" not in again and url_in(again) == url  # the running UI is reused
    finally:
        stop_dashboard(uri, tmp_path, data_cache)
    assert group_gone(pgid)  # the UI and its helper processes are gone


def test_the_seeds_of_one_config_are_grouped_into_one_line(tmp_path, data_cache):
    require_chromium()
    from playwright.sync_api import expect

    uri, proc = sweep(tmp_path, data_cache, "attention=mha,gqa", "train.seed=1,2")
    command, _ = printed_dashboard(proc.stdout)
    runs = job_runs(uri)
    assert sorted(r.info.run_name for r in runs) == ["gqa-s1", "gqa-s2", "mha-s1", "mha-s2"]
    assert sorted(r.data.tags["variant"] for r in runs) == ["gqa", "gqa", "mha", "mha"]
    out = dashboard([*command, "--no-open", "--port", str(free_port())], tmp_path, data_cache)
    try:
        with chromium_page() as page:
            page.goto(url_in(out))
            page.get_by_text("4 matching runs").wait_for(timeout=LOAD_TIMEOUT_MS)
            expect(page.get_by_text("Group by: variant")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            for variant in ("mha", "gqa"):
                expect(page.get_by_text(f"Group: {variant}", exact=True)).to_be_visible(timeout=LOAD_TIMEOUT_MS)
            charts = loss_charts(page, 2)
            assert {c["title"] for c in charts} == {"eval/loss", "train/loss"}, charts
            for chart in charts:  # per variant one line (the mean of its seeds) and one band, not a line per run
                assert len(chart["lines"]) == 2 and chart["bands"] == 2, chart
                for variant in ("mha", "gqa"):
                    assert f"{variant} ({chart['title']})" in chart["text"], chart  # the legend names the group
    finally:
        stop_dashboard(uri, tmp_path, data_cache)
