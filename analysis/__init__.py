"""Read a sweep back from MLflow and compare its variants at equal FLOPs.

    from analysis import load_sweep, analyse, write_report
    sweep = load_sweep("sqlite:///results/mlflow.db", sweep_id="abc123")
    comp = analyse(sweep, baseline="pos=rope", budgets=[1e15, 3e15])
    comp.summary            # ranking, seeds' mean and 95% CI, Welch p-value, verdict, compute multiplier
    write_report(comp, "results/analysis/abc123", ui_url="http://localhost:5000")

Or in one call / from the shell: :func:`analysis.compare.compare`, ``python -m analysis.compare``.
Modules: ``names`` (tag and metric names), ``load`` (MLflow -> pandas), ``align`` (FLOP grid, EMA),
``tables`` (budgets, baseline, multipliers, ranking), ``stats`` (seeds), ``effects`` (factorial grids),
``plots`` (figures), ``report`` (HTML, Markdown, CSV, artifact), ``compare`` (orchestration and CLI).
"""

from analysis.align import Curves, align, ema, interpolate
from analysis.compare import Comparison, analyse, compare
from analysis.errors import AnalysisError
from analysis.load import Sweep, load_sweep, resolve_tracking_uri
from analysis.report import log_report, write_report

__all__ = [
    "AnalysisError",
    "Comparison",
    "Curves",
    "Sweep",
    "align",
    "analyse",
    "compare",
    "ema",
    "interpolate",
    "load_sweep",
    "log_report",
    "resolve_tracking_uri",
    "write_report",
]
