"""Smoke test of benchmarks/bench_analysis.py: the --quick mode runs end to end and reports every phase."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_analysis_quick(tmp_path):
    from analysis.synthetic import empty_store

    empty_store(str(tmp_path / "store" / "mlflow.db"))  # the cached empty store: no ~10 s schema migration
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_analysis.py"), "--quick", "--store-dir",
         str(tmp_path / "store"), "--out", str(tmp_path / "report"), "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    for phase in ("load_sql", "load_client", "analyse_eval", "analyse_train_ema", "report", "end_to_end"):
        assert results[phase]["median_s"] > 0, phase
    assert results["runs"] == 8 and results["metric_points_loaded"] > 0
    assert (tmp_path / "report" / "report.html").is_file()
    assert "end_to_end" in proc.stdout
