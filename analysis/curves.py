"""Align every run's loss curve on FLOPs: smoothing, a common log-spaced FLOP grid, interpolation without
extrapolation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import names
from analysis.errors import AnalysisError, bad_value
from analysis.load import Sweep

AUTO = "auto"


def ema(values: np.ndarray, beta: float) -> np.ndarray:
    """Exponential moving average with bias correction: ``s_t = beta*s_{t-1} + (1-beta)*x_t``, ``s_t/(1-beta^t)``.

    ``beta=0`` returns the values unchanged. Non-finite values must be removed beforehand.
    """
    values = np.asarray(values, dtype=float)
    if beta == 0 or len(values) == 0:
        return values.copy()
    from scipy.signal import lfilter

    smoothed = lfilter([1.0 - beta], [1.0, -beta], values)
    return smoothed / (1.0 - beta ** np.arange(1, len(values) + 1))


def interpolate(flops: np.ndarray, loss: np.ndarray, at: np.ndarray | float) -> np.ndarray:
    """Loss at FLOPs ``at``, linear in log FLOPs between logged points; NaN outside ``[flops[0], flops[-1]]``."""
    at = np.asarray(at, dtype=float)
    if len(flops) == 0:
        return np.full(at.shape, np.nan)
    return np.interp(np.log(at), np.log(flops), loss, left=np.nan, right=np.nan)


def log_grid(starts: Sequence[float], ends: Sequence[float], points: int = 256) -> np.ndarray:
    """``points`` log-spaced FLOP values from the earliest start to the latest end over all runs."""
    return np.geomspace(min(starts), max(ends), points)


def choose_metric(sweep: Sweep, metric: str = AUTO) -> str:
    """``auto``: eval loss when every run logged it at two points or more, else train loss."""
    if metric == AUTO:
        if names.EVAL_LOSS in sweep.available_metrics:
            sweep.ensure_metrics([names.EVAL_LOSS])
            evals = sweep.series[names.EVAL_LOSS]
            if all(len(evals.get(r, ((), ()))[0]) >= 2 for r in sweep.run_ids):
                return names.EVAL_LOSS
        return names.TRAIN_LOSS
    allowed = [AUTO] + [m for m in sweep.available_metrics if m not in (names.TRAIN_FLOPS, names.TRAIN_TOKENS)]
    if metric not in allowed:
        raise bad_value("metric", metric, allowed, "is not logged by these runs")
    return metric


@dataclass
class Curves:
    """Each run's curve against FLOPs (``raw``: smoothed where asked, at its logged points) and on a common grid.

    ``table``: index run id, one column per grid FLOP value, NaN before a run's first and after its last point.
    """

    metric: str
    ema: float
    raw: dict[str, tuple[np.ndarray, np.ndarray]]
    grid: np.ndarray
    table: pd.DataFrame
    skipped: list[str]

    @property
    def starts(self) -> pd.Series:
        return pd.Series({r: f[0] for r, (f, _) in self.raw.items()})

    @property
    def ends(self) -> pd.Series:
        return pd.Series({r: f[-1] for r, (f, _) in self.raw.items()})

    @property
    def shared_budget(self) -> float:
        """The most FLOPs every run reached."""
        return float(self.ends.min())

    def at(self, run_id: str, flops: np.ndarray | float) -> np.ndarray:
        """Loss of one run at any FLOPs inside its range (interpolated on its own points, not the grid)."""
        f, loss = self.raw[run_id]
        return interpolate(f, loss, flops)

    def long(self) -> pd.DataFrame:
        """The grid as a long frame ``run_id, flops, loss`` without the NaN outside each run."""
        frame = self.table.copy()
        frame.columns = self.grid
        out = frame.rename_axis("run_id").reset_index().melt(id_vars="run_id", var_name="flops", value_name="loss")
        return out.dropna(subset=["loss"]).sort_values(["run_id", "flops"], kind="stable").reset_index(drop=True)


def align(sweep: Sweep, metric: str = AUTO, ema_beta: float = 0.9, points: int = 256) -> Curves:
    """Curves of ``metric`` (``auto``: eval loss where every run has it, else train loss) on a log FLOP grid.

    Train metrics (``train/*``) are smoothed with an EMA of ``ema_beta`` over steps (0: no smoothing); eval
    metrics are used as logged. Points with FLOPs <= 0 or a non-finite value are dropped; a run with fewer than two
    points left is skipped (listed in ``skipped``).
    """
    if not 0.0 <= ema_beta < 1.0:
        raise bad_value("ema", ema_beta, "a smoothing factor in [0, 1): 0 = none, 0.9 = moderate, 0.99 = heavy")
    if points < 2:
        raise bad_value("grid_points", points, "an integer >= 2")
    key = choose_metric(sweep, metric)
    sweep.ensure_metrics([key])
    beta = ema_beta if key.startswith("train/") else 0.0
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    skipped = []
    for run_id in sweep.run_ids:
        flops, values = sweep.curve(run_id, key)
        keep = np.isfinite(values) & (flops > 0)
        flops, values = flops[keep], ema(values[keep], beta)
        order = np.argsort(flops, kind="stable")
        flops, values = flops[order], values[order]
        last_of_equal = np.r_[np.diff(flops) > 0, True]
        flops, values = flops[last_of_equal], values[last_of_equal]
        if len(flops) < 2:
            skipped.append(run_id)
        else:
            raw[run_id] = (flops, values)
    if not raw:
        raise bad_value("metric", key, "a metric with two or more points joined to train/flops in some run",
                        "has no usable curve")
    grid = log_grid([f[0] for f, _ in raw.values()], [f[-1] for f, _ in raw.values()], points)
    table = pd.DataFrame({r: interpolate(f, loss, grid) for r, (f, loss) in raw.items()}).T
    table.columns = pd.Index(grid, name="flops")
    table.index.name = "run_id"
    return Curves(metric=key, ema=beta, raw=raw, grid=grid, table=table, skipped=skipped)


def mean_curve(curves: Curves, run_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean of several runs' curves at the union of their logged FLOPs, within the range all of them cover."""
    if not run_ids:
        raise AnalysisError("mean_curve needs at least one run")
    if len(run_ids) == 1:
        return curves.raw[run_ids[0]]
    lo = max(curves.raw[r][0][0] for r in run_ids)
    hi = min(curves.raw[r][0][-1] for r in run_ids)
    points = np.unique(np.concatenate([curves.raw[r][0] for r in run_ids]))
    points = points[(points >= lo) & (points <= hi)]
    return points, np.mean([curves.at(r, points) for r in run_ids], axis=0)
