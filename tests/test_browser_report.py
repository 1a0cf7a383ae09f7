"""The sweep report as a reader sees it: `python -m analysis.compare` on a small synthetic sweep, report.html opened
from disk in headless Chromium. Every figure and table renders, every variant is named, every run links to its MLflow
run page; writes the screenshot the README shows (docs/images/report.png)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from browser_util import broken_images, chromium_page, require_chromium

from analysis import names
from analysis.compare import build_parser, main
from analysis.report import DEFAULT_UI_URL, UI_URL_ENV, resolve_ui_url
from analysis.synthetic import SynthRun, empty_store, log_sweep

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "images" / "report.png"
UI = "http://mlflow.example:5000"  # any UI: the test only reads the links, nothing is fetched from it

# A 3x1 grid of positions with two seeds each: alibi clearly better than rope, learned within noise.
B = {"rope": 3.0e6, "alibi": 2.2e6, "learned": 3.05e6}


def _sweep(uri: str) -> dict:
    runs = [SynthRun(tags={"pos": pos}, b=b, alpha=0.5, offset=0.004 * seed, seed=seed, steps=80, eval_every=4,
                     noise=0.02) for pos, b in B.items() for seed in (0, 1)]
    return log_sweep(uri, "report-browser", runs, sweep_id="rb")


def test_mlflow_url_option_env_and_default(monkeypatch) -> None:
    monkeypatch.delenv(UI_URL_ENV, raising=False)
    assert resolve_ui_url(build_parser().parse_args([]).ui_url) == DEFAULT_UI_URL == "http://127.0.0.1:5000"
    monkeypatch.setenv(UI_URL_ENV, "http://env.example:1")
    assert resolve_ui_url(build_parser().parse_args([]).ui_url) == "http://env.example:1"
    for flag in ("--mlflow-url", "--ui-url"):  # the option wins over the environment
        assert resolve_ui_url(build_parser().parse_args([flag, UI]).ui_url) == UI
    assert resolve_ui_url(build_parser().parse_args(["--mlflow-url", ""]).ui_url) == ""  # no links


def test_report_renders_and_links_every_run(tmp_path: Path, monkeypatch, capsys) -> None:
    require_chromium()
    uri = empty_store(str(tmp_path / "mlflow.db"))
    sweep = _sweep(uri)
    exp_id, run_ids = sweep["experiment_id"], sweep["run_ids"]
    out = tmp_path / "report"
    # The UI URL from the environment, as a team would set it once; the CLI's own option is checked above.
    monkeypatch.setenv(UI_URL_ENV, UI + "/")
    assert main(["--tracking-uri", uri, "--sweep", "rb", "--baseline", "pos=rope", "--out", str(out),
                 "--no-log"]) == 0, capsys.readouterr().err
    html_path = out / "report.html"
    variants = [f"pos={p}" for p in B]
    run_page = {r: f"{UI}/#/experiments/{exp_id}/runs/{r}" for r in run_ids}
    runs_page = f"{UI}/#/experiments/{exp_id}/runs"

    requested: list[str] = []
    with chromium_page({"width": 1400, "height": 900}) as page:
        page.on("request", lambda req: requested.append(req.url))
        page.goto(html_path.as_uri(), wait_until="load")
        # Self-contained: nothing but the file itself and its inline (data:) figures is fetched.
        assert [u for u in requested if not u.startswith(("data:", html_path.as_uri()))] == []
        n_images = page.evaluate("document.images.length + document.querySelectorAll('svg').length")
        assert n_images >= 3, "loss_vs_flops, multipliers and main_effects figures"
        assert broken_images(page) == []
        tables = page.evaluate("""() => [...document.querySelectorAll('table')].map(t => ({
            rows: t.tBodies[0] ? t.tBodies[0].rows.length : 0,
            height: t.getBoundingClientRect().height}))""")
        assert len(tables) >= 5 and all(t["rows"] > 0 and t["height"] > 0 for t in tables), tables
        text = page.inner_text("body")
        missing = [v for v in variants if v not in text]
        assert not missing, f"variants not shown: {missing}"
        links = page.eval_on_selector_all("a[href]", "els => els.map(a => [a.textContent, a.href])")
        hrefs = {href for _, href in links}
        assert not [r for r, url in run_page.items() if url not in hrefs], "every run links to its run page"
        assert runs_page in hrefs  # the experiment's runs page
        assert f"{UI}/#/experiments/{exp_id}/runs/{sweep['parent_run_id']}" in hrefs  # the sweep's own run
        # Each variant's name opens the runs page on exactly its runs (seeds side by side).
        by_text = {t: href for t, href in links}
        for variant in variants:
            assert by_text[variant].startswith(runs_page + "?searchFilter=attributes.run_id%20IN%20")
        assert f"{runs_page}?searchFilter=tags.%60{names.TAG_SWEEP_ID}%60%20%3D%20%27rb%27" in hrefs  # the sweep
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000

    # The Markdown twin links the same runs, and its figures resolve beside it.
    md = (out / "report.md").read_text(encoding="utf-8")
    assert all(f"]({url})" in md for url in run_page.values()) and f"]({runs_page})" in md
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(figures) >= 3 and all(os.path.getsize(out / f) > 0 for f in figures)
