"""Compare a sweep at equal FLOPs: tables, statistics, figures and a report.

    python -m analysis.compare --sweep <sweep id> --baseline pos=rope

With no ``--experiment``/``--sweep``/``--parent-run`` it compares the latest sweep in the store. The store is
``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///results/mlflow.db``. Runs in the report link to
the MLflow UI at ``--mlflow-url``, else ``$OLMO_MLFLOW_UI_URL``, else the UI ``python -m analysis.dashboard`` runs for
the store, else ``http://127.0.0.1:5000`` (``mlflow ui``'s).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import names
from analysis.curves import AUTO, Curves, align
from analysis.effects import interactions, main_effects, marginal_means
from analysis.errors import AnalysisError, bad_value
from analysis.load import LOADERS, Sweep, load_sweep
from analysis.stats import seed_summary
from analysis.tables import (
    compute_multipliers,
    default_budgets,
    loss_at_budgets,
    per_run_at,
    ranking,
    resolve_baseline,
)


@dataclass
class Comparison:
    """Everything the report shows. Tables are indexed by variant unless said otherwise.

    ``summary``: ranked variants at the shared budget: ``rank, n, mean, std, ci_low, ci_high, diff`` (vs baseline),
    ``p_value`` (Welch), ``p_holm``, ``significant``, ``verdict``, ``multiplier``, ``flag`` (see
    :func:`analysis.tables.compute_multipliers`), ``gap_to_best``.
    ``per_run``: index run id; ``variant``, ``seed`` and the loss at each budget (float columns).
    ``loss_at_budgets``: mean over seeds at each budget. ``multipliers``: at each budget; ``multiplier_flags``: how each
    was measured ("" directly, ``reverse``, or a bound ``>``/``<``; see :func:`analysis.tables.compute_multipliers`).
    ``variant_table``: axis values, ``mean``, ``sem2`` per variant (the input of the effects).
    """

    sweep: Sweep
    curves: Curves
    baseline: str
    budgets: list[float]
    shared_budget: float
    alpha: float
    per_run: pd.DataFrame
    loss_at_budgets: pd.DataFrame
    multipliers: pd.DataFrame
    multiplier_flags: pd.DataFrame
    summary: pd.DataFrame
    variant_table: pd.DataFrame
    main_effects: pd.DataFrame
    marginal_means: pd.DataFrame
    interactions: pd.DataFrame
    interaction_threshold: float
    notes: list[str] = field(default_factory=list)

    @property
    def variants(self) -> list[str]:
        return list(self.summary.index)

    def curves_frame(self) -> pd.DataFrame:
        """The aligned curves, long: ``run_id, run_name, variant, seed, <axes>, flops, loss`` (grid points inside each
        run only), for people who want to do their own analysis."""
        long = self.curves.long()
        runs = self.sweep.runs
        meta = runs.loc[:, ["run_name", "variant", "seed", *self.sweep.axes]]
        out = long.merge(meta, left_on="run_id", right_index=True, how="left")
        out.insert(len(out.columns) - 1, "metric", self.curves.metric)
        return out[["run_id", "run_name", "variant", "seed", *self.sweep.axes, "metric", "flops", "loss"]]

    def csv_tables(self) -> dict[str, pd.DataFrame]:
        def by_budget(frame: pd.DataFrame) -> pd.DataFrame:
            return frame.rename(columns={b: f"{b:.6g}" for b in self.budgets})

        runs = self.sweep.runs
        run_cols = ["experiment_id", "run_name", "status", "variant", "seed", *self.sweep.axes, "parent_run_id"]
        run_table = runs.loc[list(self.per_run.index), run_cols].copy()
        run_table["flops_reached"] = self.curves.ends.reindex(run_table.index)
        run_table["loss_at_shared_budget"] = self.per_run[self.shared_budget]
        return {
            "curves": self.curves_frame(),
            "summary": self.summary,
            "loss_at_budgets": by_budget(self.loss_at_budgets),
            "multipliers": pd.concat([by_budget(self.multipliers),
                                      by_budget(self.multiplier_flags).add_prefix("flag@")], axis=1),
            "main_effects": self.main_effects,
            "interactions": self.interactions,
            "runs": run_table,
        }


def parse_budgets(text: str | Sequence[float] | None) -> list[float] | None:
    """``"1e15,3e15"`` or a sequence -> sorted positive floats; None -> None (defaults)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    allowed = "comma-separated positive FLOP counts, e.g. 1e15,3e15"
    try:
        values = [float(x) for x in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        raise bad_value("budgets", text, allowed) from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise bad_value("budgets", text, allowed)
    return sorted(set(values))


def analyse(
    sweep: Sweep,
    baseline: str | None = None,
    metric: str = AUTO,
    budgets: Sequence[float] | str | None = None,
    ema: float = 0.9,
    grid_points: int = 256,
    alpha: float = 0.05,
    interaction_threshold: float = 0.2,
) -> Comparison:
    """Compare the variants of a loaded sweep at equal FLOPs (see :class:`Comparison`)."""
    if not 0 < alpha < 1:
        raise bad_value("alpha", alpha, "a significance level in (0, 1), e.g. 0.05")
    curves = align(sweep, metric, ema, grid_points)
    runs = sweep.runs.loc[list(curves.raw)]
    all_axes = [*sweep.axes, *sweep.fixed_axes]
    base = resolve_baseline(runs, baseline, all_axes)
    shared = curves.shared_budget
    wanted = parse_budgets(budgets)
    chosen = sorted(set((wanted if wanted is not None else default_budgets(curves)) + [shared]))
    notes = []
    if sweep.dropped:
        notes.append(f"Left out (no {names.TRAIN_FLOPS} logged): {', '.join(sweep.dropped)}.")
    if curves.skipped:
        notes.append(f"Skipped (fewer than two points of {curves.metric} with FLOPs): {', '.join(curves.skipped)}.")
    if wanted:
        beyond = [b for b in wanted if b > curves.ends.max()]
        if beyond:
            notes.append(f"No run reached budget(s) {', '.join(f'{b:.3g}' for b in beyond)} FLOPs.")
    if baseline is None:
        notes.append(f"Baseline {base!r} is the first variant by name (choose one with --baseline).")

    per_run = per_run_at(curves, runs, chosen)
    at_budgets = loss_at_budgets(per_run, chosen)
    multipliers, flags = compute_multipliers(curves, runs, at_budgets, base)
    groups = {v: per_run.loc[per_run["variant"] == v, shared].to_numpy(dtype=float)
              for v in sorted(per_run["variant"].unique())}
    stats = seed_summary(groups, base, alpha)
    summary = ranking(stats, multipliers[shared], flags[shared])

    first = runs.groupby("variant").first()
    variant_table = first.loc[summary.index, all_axes].copy() if all_axes else pd.DataFrame(index=summary.index)
    variant_table["mean"] = summary["mean"]
    variant_table["sem2"] = summary["std"] ** 2 / summary["n"]
    reference = {a: str(first.loc[base, a]) for a in sweep.axes}
    effects = main_effects(variant_table, sweep.axes, reference)
    marginals = marginal_means(variant_table, sweep.axes)
    inter = interactions(variant_table, sweep.axes, reference, effects, relative=interaction_threshold)
    if sweep.axes and len(variant_table) < np.prod([variant_table[a].nunique() for a in sweep.axes]):
        notes.append("The grid is incomplete: main effects average only over the matched pairs that ran.")
    return Comparison(
        sweep=sweep, curves=curves, baseline=base, budgets=chosen, shared_budget=shared, alpha=alpha, per_run=per_run,
        loss_at_budgets=at_budgets, multipliers=multipliers, multiplier_flags=flags, summary=summary,
        variant_table=variant_table,
        main_effects=effects, marginal_means=marginals, interactions=inter,
        interaction_threshold=interaction_threshold, notes=notes,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "sweep"


def compare_sweep(
    tracking_uri: str | None = None,
    *,
    experiment: str | None = None,
    sweep_id: str | None = None,
    parent_run_id: str | None = None,
    baseline: str | None = None,
    metric: str = AUTO,
    budgets: Sequence[float] | str | None = None,
    ema: float = 0.9,
    out_dir: str | None = None,
    ui_url: str | None = None,
    axes: Sequence[str] | None = None,
    log_artifact: bool = True,
    loader: str = "auto",
    grid_points: int = 256,
    alpha: float = 0.05,
    statuses: Sequence[str] | None = None,
) -> tuple[Comparison, dict[str, str]]:
    """Load, analyse, write the report into ``out_dir`` (default ``results/analysis/<target>``, ``results`` being
    ``$OLMO_SWEEPS_RESULTS`` when set) and log it on the sweep's own run. ``ui_url``: the MLflow UI the report links
    to (None: ``$OLMO_MLFLOW_UI_URL``, else the UI running for the store, else ``http://127.0.0.1:5000``; "": no
    links). Returns the comparison and name -> path (``html``, ``markdown``, CSVs, figures, ``artifact_uri`` when
    logged)."""
    from analysis.report import log_report, resolve_ui_url, write_report

    keys = [names.TRAIN_LOSS, names.EVAL_LOSS] + ([metric] if metric != AUTO else [])
    sweep = load_sweep(tracking_uri, experiment=experiment, sweep_id=sweep_id, parent_run_id=parent_run_id,
                       axes=axes, metrics=keys, loader=loader, statuses=statuses)
    if metric != AUTO and metric not in sweep.available_metrics:
        raise bad_value("metric", metric, [AUTO, *sweep.available_metrics], "is not logged by these runs")
    comp = analyse(sweep, baseline=baseline, metric=metric, budgets=budgets, ema=ema, grid_points=grid_points,
                   alpha=alpha)
    out_dir = out_dir or os.path.join(os.environ.get(names.RESULTS_DIR_ENV) or "results", "analysis",
                                      _slug(sweep.target))
    paths = write_report(comp, out_dir, resolve_ui_url(ui_url, sweep.tracking_uri))
    if log_artifact:
        uri = log_report(comp, out_dir)
        if uri:
            paths["artifact_uri"] = uri
    return comp, paths


# ------------------------------------------------------------------------------------------------ command line


def summary_text(comp: Comparison) -> str:
    """The ranking as a plain-text table."""
    from analysis.report import fmt_loss, fmt_mult, fmt_p

    rows = []
    for variant, row in comp.summary.iterrows():
        ci = f"{fmt_loss(row['ci_low'])}-{fmt_loss(row['ci_high'])}" if math.isfinite(row["ci_low"]) else "-"
        rows.append({"rank": row["rank"], "variant": variant, "seeds": row["n"], "loss": fmt_loss(row["mean"]),
                     "95% CI": ci, "diff": f"{row['diff']:+.4f}", "multiplier": fmt_mult(row["multiplier"],
                                                                                     row["flag"]),
                     "p": fmt_p(row["p_value"]), "verdict": row["verdict"]})
    return pd.DataFrame(rows).to_string(index=False)


def build_parser() -> argparse.ArgumentParser:
    from analysis.report import DEFAULT_UI_URL, UI_URL_ENV

    p = argparse.ArgumentParser(
        prog="python -m analysis.compare",
        description="Compare the variants of a sweep at equal FLOPs: tables, statistics, figures, an HTML/Markdown "
                    "report (logged on the sweep's parent run) and the aligned curves as CSV.",
    )
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow store (default: ${names.TRACKING_URI_ENV}, else {names.DEFAULT_TRACKING_URI})")
    target = p.add_argument_group("what to compare (none: the latest sweep in the store)")
    target.add_argument("--experiment", help="experiment name or id (all its runs; narrows --sweep)")
    target.add_argument("--sweep", dest="sweep_id", help=f"sweep id (tag {names.TAG_SWEEP_ID!r})")
    target.add_argument("--parent-run", dest="parent_run_id", help="run id of the sweep's parent run")
    p.add_argument("--baseline", help="variant name (e.g. pos=rope,norm=rms), axis=value filter, a bare axis value "
                                      "(rope) or a run name/id (default: first variant by name)")
    p.add_argument("--metric", default=AUTO, help="auto (eval/loss where every run has it, else train/loss), or a "
                                                  "logged metric key")
    p.add_argument("--budgets", help="FLOP budgets for the tables, comma-separated (default: 5 log-spaced up to the "
                                     "shared budget)")
    p.add_argument("--ema", type=float, default=0.9, help="EMA smoothing of train metrics over steps, in [0, 1) "
                                                          "(default 0.9; 0 = none)")
    p.add_argument("--out", dest="out_dir", help="output folder (default: results/analysis/<target>, results being "
                                                 f"${names.RESULTS_DIR_ENV} when set)")
    # --ui-url: the option's earlier name, still accepted.
    p.add_argument("--mlflow-url", "--ui-url", dest="ui_url", metavar="URL",
                   help="MLflow UI base URL the report links each run and variant to (default: "
                        f"${UI_URL_ENV}, else the UI `python -m analysis.dashboard` runs for the store, else "
                        f"{DEFAULT_UI_URL}, where `mlflow ui` listens; '' for no links)")
    p.add_argument("--axes", help="comma-separated axis tags (default: known axis tags present)")
    p.add_argument("--grid-points", type=int, default=256, help="points of the common log FLOP grid (default 256)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the t-tests (default 0.05)")
    p.add_argument("--status", help="only runs in these MLflow states, comma-separated (e.g. FINISHED; default: all)")
    p.add_argument("--loader", default="auto", choices=LOADERS, help="metric loading: SQL fast path or client API")
    p.add_argument("--no-log", dest="log_artifact", action="store_false",
                   help="do not log the report on the parent run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        comp, paths = compare_sweep(
            args.tracking_uri, experiment=args.experiment, sweep_id=args.sweep_id, parent_run_id=args.parent_run_id,
            baseline=args.baseline, metric=args.metric, budgets=args.budgets, ema=args.ema, out_dir=args.out_dir,
            ui_url=args.ui_url, axes=[a.strip() for a in args.axes.split(",")] if args.axes else None,
            log_artifact=args.log_artifact, loader=args.loader, grid_points=args.grid_points, alpha=args.alpha,
            statuses=[x.strip() for x in args.status.split(",")] if args.status else None,
        )
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{comp.sweep.target}: {comp.curves.metric} at the shared budget {comp.shared_budget:.3g} FLOPs, "
          f"baseline {comp.baseline}")
    print(summary_text(comp))
    print(f"report: {paths['html']}")
    print(f"markdown: {paths['markdown']}")
    print(f"curves: {paths['curves.csv']}")
    if "artifact_uri" in paths:
        print(f"logged: {paths['artifact_uri']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
