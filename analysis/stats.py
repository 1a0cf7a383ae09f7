"""Seeds: mean and 95% interval per variant, Welch's t-test of each variant against the baseline, a plain verdict."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the t-interval of the mean; low = high = NaN with fewer than two values."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def welch(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); NaN with fewer than two values on a side."""
    from scipy import stats

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:  # no noise at all: any difference is real
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if len(idx) == 0:
        return out
    order = idx[np.argsort(p[idx])]
    m = len(order)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out


def verdict(diff: float, p: float, alpha: float, is_baseline: bool, lower_is_better: bool = True) -> str:
    """One plain phrase: better/worse than the baseline (p < alpha), within noise, or not testable."""
    if is_baseline:
        return "baseline"
    if not math.isfinite(diff):
        return "no value at this budget"
    if not math.isfinite(p):
        return "not testable (needs 2+ seeds on both sides)"
    if p >= alpha:
        return f"within noise (p={p:.2g})"
    better = diff < 0 if lower_is_better else diff > 0
    return f"{'better' if better else 'worse'} than baseline (p={p:.2g})"


def seed_summary(values: Mapping[str, Sequence[float]], baseline: str, alpha: float = 0.05,
                 level: float = 0.95) -> pd.DataFrame:
    """Per variant: ``n, mean, std, ci_low, ci_high, diff`` (mean - baseline mean), ``p_value`` (Welch against
    the baseline), ``p_holm`` (Holm-adjusted over the variants), ``significant`` and ``verdict``."""
    base = values[baseline]
    base_mean = float(np.nanmean(base)) if len(base) else math.nan
    rows = []
    for variant, vals in values.items():
        x = np.asarray(vals, dtype=float)
        mean, low, high = mean_interval(x, level)
        finite = x[np.isfinite(x)]
        rows.append({
            "variant": variant, "n": int(len(finite)), "mean": mean,
            "std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
            "ci_low": low, "ci_high": high, "diff": mean - base_mean,
            "p_value": math.nan if variant == baseline else welch(x, base),
        })
    frame = pd.DataFrame(rows).set_index("variant")
    frame["p_holm"] = holm(frame["p_value"].to_numpy())
    frame["significant"] = frame["p_value"] < alpha
    frame["verdict"] = [verdict(d, p, alpha, v == baseline)
                        for v, d, p in zip(frame.index, frame["diff"], frame["p_value"], strict=True)]
    return frame
