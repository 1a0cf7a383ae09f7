"""Equal-FLOP tables: loss at budgets, the baseline, compute multipliers and the ranking."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.curves import Curves, mean_curve
from analysis.errors import bad_value


def parse_filter(text: str) -> dict[str, str] | None:
    """``"pos=rope,norm=rms"`` -> ``{"pos": "rope", "norm": "rms"}``; None when it is not such a filter."""
    parts = [p.strip() for p in text.replace("&", ",").split(",") if p.strip()]
    if not parts or not all("=" in p for p in parts):
        return None
    return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in parts)}


def resolve_baseline(runs: pd.DataFrame, baseline: str | None, axes: Sequence[str]) -> str:
    """The baseline variant: a variant name, a run name or id (its variant), an ``axis=value[,axis=value]`` filter
    over ``axes`` (the axis columns of ``runs``) or a bare value of one axis (``rope``), matching exactly one
    variant. None picks the first variant in sorted order."""
    variants = sorted(runs["variant"].unique())
    if baseline is None:
        return variants[0]
    if baseline in variants:
        return baseline
    if baseline in runs.index:
        return str(runs.loc[baseline, "variant"])
    by_name = runs.loc[runs["run_name"] == baseline, "variant"].unique()
    if len(by_name) == 1:
        return str(by_name[0])
    allowed = f"a variant ({', '.join(map(repr, variants[:20]))}) or an axis=value filter"
    axis_columns = [a for a in axes if a in runs.columns]
    wanted = parse_filter(baseline)
    if wanted is None:  # a bare value ("rope") of exactly one axis
        owners = [a for a in axis_columns if baseline in set(runs[a].astype(str))]
        if len(owners) != 1:
            raise bad_value("baseline", baseline, allowed, "is not in the sweep")
        wanted = {owners[0]: baseline}
    for axis in wanted:
        if axis not in axis_columns:
            raise bad_value("baseline", baseline, f"filters over the axes {', '.join(axis_columns) or '(none)'}",
                            f"names no axis {axis!r}")
    mask = np.ones(len(runs), dtype=bool)
    for axis, value in wanted.items():
        mask &= runs[axis].astype(str).to_numpy() == value
    matched = sorted(runs.loc[mask, "variant"].unique())
    if not matched:
        raise bad_value("baseline", baseline, allowed, "is not in the sweep")
    if len(matched) > 1:
        raise bad_value("baseline", baseline, f"a filter matching one variant (it matches {', '.join(matched)})",
                        "is ambiguous")
    return matched[0]


def default_budgets(curves: Curves, count: int = 5, span: float = 100.0) -> list[float]:
    """``count`` log-spaced budgets ending at the shared budget, starting where every run has begun (at most
    ``span`` times below it); inner ones are rounded to 2 significant digits."""
    end = curves.shared_budget
    start = max(float(curves.starts.max()), end / span)
    if start >= end:
        return [end]
    budgets = [float(f"{b:.2g}") for b in np.geomspace(start, end, count)[:-1]]
    budgets = [b for b in budgets if start <= b < end]
    return sorted(set(budgets)) + [end]


def per_run_at(curves: Curves, runs: pd.DataFrame, budgets: Sequence[float]) -> pd.DataFrame:
    """Each run's loss at each budget (columns = budgets; NaN outside the run), with its variant and seed."""
    data = {r: curves.at(r, np.asarray(budgets, dtype=float)) for r in curves.raw}
    frame = pd.DataFrame(data, index=list(budgets)).T
    frame.index.name = "run_id"
    frame.insert(0, "variant", runs.loc[frame.index, "variant"])
    frame.insert(1, "seed", runs.loc[frame.index, "seed"])
    return frame


def loss_at_budgets(per_run: pd.DataFrame, budgets: Sequence[float]) -> pd.DataFrame:
    """Mean loss over seeds per variant and budget; NaN where a seed of the variant did not reach the budget."""
    grouped = per_run.groupby("variant")[list(budgets)]
    means = grouped.mean()
    means[grouped.count() < grouped.size().to_numpy()[:, None]] = np.nan
    return means


def flops_to_reach(flops: np.ndarray, loss: np.ndarray, target: float) -> tuple[float, str]:
    """FLOPs at which a curve first reaches ``target`` (on its running minimum, linear in log FLOPs).

    Returns ``(flops, censored)``: censored is ``">"`` when the curve never gets that low (flops = its end, a lower
    bound), ``"<"`` when it is already lower at its first point (flops = its start, an upper bound), else ``""``.
    """
    if not math.isfinite(target) or len(flops) == 0:
        return math.nan, ""
    best = np.minimum.accumulate(loss)
    if best[0] <= target:
        return (float(flops[0]), "<") if best[0] < target else (float(flops[0]), "")
    if best[-1] > target:
        return float(flops[-1]), ">"
    i = int(np.argmax(best <= target))
    lf0, lf1 = np.log(flops[i - 1]), np.log(flops[i])
    frac = (best[i - 1] - target) / (best[i - 1] - best[i])
    return float(np.exp(lf0 + frac * (lf1 - lf0))), ""


REVERSE = "reverse"  # flag of a multiplier measured from the variant's side (see compute_multipliers)


def compute_multipliers(curves: Curves, runs: pd.DataFrame, means: pd.DataFrame, baseline: str
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compute multiplier of each variant against the baseline at each budget F: the FLOPs the baseline (mean over
    its seeds) needs to reach the variant's loss at F, divided by F. Above 1: the variant is more compute-efficient.

    When the baseline never gets that low (typical at the end of a sweep whose runs share one budget), it is measured
    from the variant's side instead: F divided by the FLOPs the variant needed to reach the baseline's loss at F
    (flag ``reverse``; both agree when the curves are parallel in log FLOPs, e.g. power laws with one exponent).
    When neither curve reaches the other's loss the value is a bound: flag ``">"`` (at least) or ``"<"`` (at most).
    Returns ``(multipliers, flags)``: index variant, one column per budget (those of ``means``).
    """
    def members(variant):
        return [r for r in runs.index[runs["variant"] == variant] if r in curves.raw]

    bflops, bloss = mean_curve(curves, members(baseline))
    values, flags = {}, {}
    for variant in means.index:
        row, flag = [], []
        vcurve = None
        for budget in means.columns:
            loss = float(means.loc[variant, budget])
            if variant == baseline or not math.isfinite(loss):
                row.append(1.0 if math.isfinite(loss) else math.nan)
                flag.append("")
                continue
            reach, censored = flops_to_reach(bflops, bloss, loss)
            if censored == ">":  # the baseline never got that low: how early did the variant reach the baseline?
                base_loss = float(means.loc[baseline, budget]) if baseline in means.index else math.nan
                vcurve = vcurve or mean_curve(curves, members(variant))
                vreach, vcensored = flops_to_reach(*vcurve, base_loss)
                if math.isfinite(vreach) and vcensored == "":
                    row.append(float(budget) / vreach)
                    flag.append(REVERSE)
                    continue
            row.append(reach / float(budget))
            flag.append(censored)
        values[variant], flags[variant] = row, flag
    out = pd.DataFrame(values, index=list(means.columns)).T
    flag_frame = pd.DataFrame(flags, index=list(means.columns)).T
    out.index.name = flag_frame.index.name = "variant"
    return out, flag_frame


def ranking(summary: pd.DataFrame, multipliers: pd.Series, flags: pd.Series) -> pd.DataFrame:
    """Variants ordered by mean loss at the shared budget (rank 1 = lowest), with the gap to the best."""
    frame = summary.copy()
    frame["multiplier"] = multipliers.reindex(frame.index)
    frame["flag"] = flags.reindex(frame.index).fillna("")
    frame = frame.sort_values("mean", kind="stable")
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    frame["gap_to_best"] = frame["mean"] - frame["mean"].min()
    return frame
