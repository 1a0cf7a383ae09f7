"""Factorial grids: the main effect of each axis and the two-axis interactions worth reporting.

Input: one row per variant with its axis values, ``mean`` (the loss compared) and ``sem2`` (squared standard error of
that mean over seeds, NaN with one seed). Differences are matched: a value is compared with the reference value at
the same values of every other axis, and only where both cells ran, so incomplete grids stay fair.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def _others(axes: Sequence[str], *exclude: str) -> list[str]:
    return [a for a in axes if a not in exclude]


def _se(sem2_terms: np.ndarray, n: int) -> float:
    """Standard error of a mean of ``n`` contrasts whose cell variances add up to ``sem2_terms``."""
    if n == 0 or not np.all(np.isfinite(sem2_terms)):
        return math.nan
    return float(math.sqrt(sem2_terms.sum()) / n)


def _with(key: tuple, i: int, x: str, j: int, y: str) -> tuple:
    k = list(key)
    k[i], k[j] = x, y
    return tuple(k)


def _cells(table: pd.DataFrame, axes: Sequence[str], column: str) -> dict[tuple, float]:
    return {tuple(str(v) for v in row[list(axes)]): float(row[column]) for _, row in table.iterrows()}


def main_effects(table: pd.DataFrame, axes: Sequence[str], reference: Mapping[str, str]) -> pd.DataFrame:
    """For each axis and each value other than its reference: the mean over the other axes' combinations of
    ``mean(axis=value) - mean(axis=reference)``; ``se`` from the seeds, ``spread`` = (min, max) of the matched
    differences (a wide spread means the effect depends on the other axes)."""
    means = _cells(table, axes, "mean")
    sem2 = _cells(table, axes, "sem2")
    rows = []
    for i, axis in enumerate(axes):
        ref = str(reference[axis])
        values = sorted({k[i] for k in means} - {ref})
        for value in values:
            diffs, terms = [], []
            for key, m in means.items():
                if key[i] != value:
                    continue
                ref_key = key[:i] + (ref,) + key[i + 1:]
                if ref_key in means and math.isfinite(m) and math.isfinite(means[ref_key]):
                    diffs.append(m - means[ref_key])
                    terms += [sem2[key], sem2[ref_key]]
            n = len(diffs)
            rows.append({
                "axis": axis, "value": value, "reference": ref,
                "effect": float(np.mean(diffs)) if n else math.nan,
                "se": _se(np.asarray(terms), n), "n_pairs": n,
                "min_diff": float(np.min(diffs)) if n else math.nan,
                "max_diff": float(np.max(diffs)) if n else math.nan,
            })
    return pd.DataFrame(rows, columns=["axis", "value", "reference", "effect", "se", "n_pairs", "min_diff",
                                       "max_diff"])


def marginal_means(table: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Mean (and min/max over the other axes) of the compared loss at each value of each axis: the main-effect plot."""
    rows = []
    for axis in axes:
        for value, group in table.groupby(table[axis].astype(str), sort=True):
            rows.append({"axis": axis, "value": value, "mean": float(group["mean"].mean()),
                         "min": float(group["mean"].min()), "max": float(group["mean"].max()), "n": len(group)})
    return pd.DataFrame(rows, columns=["axis", "value", "mean", "min", "max", "n"])


def interactions(table: pd.DataFrame, axes: Sequence[str], reference: Mapping[str, str],
                 effects: pd.DataFrame | None = None, relative: float = 0.2, z: float = 2.0) -> pd.DataFrame:
    """Two-axis interaction contrasts ``m(a,b) - m(a0,b) - m(a,b0) + m(a0,b0)`` (0 = the effects add up),
    averaged over the other axes, for each pair of axes and non-reference values.

    ``notable``: at least ``relative`` times the larger of the two main effects, and beyond ``z`` standard errors
    where seeds give one.
    """
    means = _cells(table, axes, "mean")
    sem2 = _cells(table, axes, "sem2")
    effects = main_effects(table, axes, reference) if effects is None else effects
    size = {(r.axis, r.value): abs(r.effect) for r in effects.itertuples()}
    rows = []
    for (i, a), (j, b) in itertools.combinations(enumerate(axes), 2):
        ra, rb = str(reference[a]), str(reference[b])
        va_all = sorted({k[i] for k in means} - {ra})
        vb_all = sorted({k[j] for k in means} - {rb})
        for va, vb in itertools.product(va_all, vb_all):
            contrasts, terms = [], []
            for key in means:
                if key[i] != va or key[j] != vb:
                    continue

                quad = [_with(key, i, x, j, y) for x, y in ((va, vb), (ra, vb), (va, rb), (ra, rb))]
                if all(q in means and math.isfinite(means[q]) for q in quad):
                    m = [means[q] for q in quad]
                    contrasts.append(m[0] - m[1] - m[2] + m[3])
                    terms += [sem2[q] for q in quad]
            n = len(contrasts)
            value = float(np.mean(contrasts)) if n else math.nan
            se = _se(np.asarray(terms), n)
            scale = max(size.get((a, va), 0.0), size.get((b, vb), 0.0))
            notable = bool(n) and abs(value) >= relative * scale and abs(value) > 1e-12
            if math.isfinite(se):
                notable = notable and abs(value) > z * se
            rows.append({"axis_a": a, "value_a": va, "axis_b": b, "value_b": vb, "interaction": value, "se": se,
                         "n": n, "notable": notable})
    return pd.DataFrame(rows, columns=["axis_a", "value_a", "axis_b", "value_b", "interaction", "se", "n", "notable"])
