"""Read a sweep back from MLflow and compare its variants at equal FLOPs.

    from analysis import load_sweep, analyse, write_report
    sweep = load_sweep("sqlite:///results/mlflow.db", sweep_id="abc123")
    comp = analyse(sweep, baseline="pos=rope", budgets=[1e15, 3e15])
    comp.summary            # ranking, seeds' mean and 95% CI, Welch p-value, verdict, compute multiplier
    write_report(comp, "results/analysis/abc123", ui_url="http://localhost:5000")

Or in one call / from the shell: :func:`analysis.compare_sweep`, ``python -m analysis.compare``.
Modules: ``names`` (tag and metric names), ``load`` (MLflow -> pandas), ``curves`` (FLOP grid, EMA),
``tables`` (budgets, baseline, multipliers, ranking), ``stats`` (seeds), ``effects`` (factorial grids),
``plots`` (figures), ``report`` (HTML, Markdown, CSV, artifact), ``compare`` (orchestration and CLI).
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use, so that ``import analysis`` stays light and ``python -m analysis.compare`` runs cleanly.
_EXPORTS = {
    "AnalysisError": "analysis.errors",
    "Comparison": "analysis.compare",
    "Curves": "analysis.curves",
    "Sweep": "analysis.load",
    "align": "analysis.curves",
    "analyse": "analysis.compare",
    "compare_sweep": "analysis.compare",
    "ema": "analysis.curves",
    "interpolate": "analysis.curves",
    "load_sweep": "analysis.load",
    "log_report": "analysis.report",
    "resolve_tracking_uri": "analysis.load",
    "write_report": "analysis.report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
