"""The report: one self-contained HTML file (figures as base64 PNG, tables as HTML, runs linked to the MLflow UI),
its Markdown twin, the figures (PNG, SVG), the aligned curves and the tables as CSV; logged on the parent run."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd

from analysis import names
from analysis.plots import make_figures, save_figure
from analysis.tables import REVERSE

if TYPE_CHECKING:
    from analysis.compare import Comparison

Link = tuple[str, str | None]  # (text, url or None)
Cell = str | list[Link]

# Where `mlflow ui` listens unless told otherwise; the environment variable points reports at another UI.
DEFAULT_UI_URL = "http://127.0.0.1:5000"
UI_URL_ENV = "OLMO_MLFLOW_UI_URL"


def resolve_ui_url(ui_url: str | None = None, tracking_uri: str | None = None) -> str:
    """The MLflow UI base URL the report links to: ``ui_url`` when given ("" = no links), else ``$OLMO_MLFLOW_UI_URL``,
    else the UI running for ``tracking_uri`` (``python -m analysis.dashboard`` started it; an MLflow server store is
    its own UI), else MLflow's default ``http://127.0.0.1:5000``."""
    from olmo.tracking.ui_server import running_ui

    if ui_url is not None:
        return ui_url
    if os.environ.get(UI_URL_ENV):
        return os.environ[UI_URL_ENV]
    found = running_ui(tracking_uri) if tracking_uri else None
    return found.url if found is not None else DEFAULT_UI_URL


def run_url(ui_url: str | None, experiment_id: str, run_id: str) -> str | None:
    """``<ui>/#/experiments/<exp id>/runs/<run id>``, or None without a UI base URL."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def experiment_url(ui_url: str | None, experiment_id: str, search_filter: str | None = None) -> str | None:
    """The experiment's runs page ``<ui>/#/experiments/<exp id>/runs``, narrowed by an MLflow search filter (the UI
    reads ``searchFilter`` from the URL); None without a UI base URL."""
    if not ui_url:
        return None
    url = f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
    # Percent-encode the filter: its spaces and quotes would otherwise end a Markdown link.
    return f"{url}?searchFilter={urllib.parse.quote(search_filter, safe='')}" if search_filter else url


def runs_filter(run_ids: Sequence[str]) -> str:
    """An MLflow search filter matching exactly these runs."""
    return "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")"


def fmt_loss(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4f}"


def fmt_flops(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.3g}"


def fmt_mult(m: float, flag: str = "") -> str:
    """``1.44×``; ``>1.00×`` / ``<1.00×`` for bounds; ``1.44×†`` when measured from the variant's side."""
    if m is None or not math.isfinite(m):
        return "—"
    if flag == REVERSE:
        return f"{m:.2f}×†"
    return f"{flag}{m:.2f}×"


def fmt_p(p: float) -> str:
    return "—" if p is None or not math.isfinite(p) else f"{p:.2g}"


def fmt_delta(d: float, base: float) -> str:
    if d is None or not math.isfinite(d):
        return "—"
    pct = f" ({100 * d / base:+.2f}%)" if base and math.isfinite(base) else ""
    return f"{d:+.4f}{pct}"


# ------------------------------------------------------------------------------------------------ document model


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]


@dataclass
class Doc:
    title: str
    blocks: list[tuple] = field(default_factory=list)

    def h2(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, items: list[tuple[str, Cell]]) -> None:
        """Bullets of (bold lead, rest)."""
        self.blocks.append(("list", items))

    def table(self, table: Table) -> None:
        self.blocks.append(("table", table))

    def figure(self, stem: str, caption: str) -> None:
        self.blocks.append(("figure", stem, caption))


def _html_cell(cell: Cell) -> str:
    if isinstance(cell, str):
        return html.escape(cell)
    return " ".join(f'<a href="{html.escape(u)}">{html.escape(t)}</a>' if u else html.escape(t) for t, u in cell)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, str):
        return _md_escape(cell)
    return " ".join(f"[{_md_escape(t)}]({u})" if u else _md_escape(t) for t, u in cell)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
line-height:1.45;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;white-space:nowrap}
th{background:#f4f4f4;white-space:normal}td:first-child,th:first-child{text-align:left}
td.text{text-align:left;white-space:normal}
figure{margin:1em 0}figure img{max-width:100%}figcaption{color:#555;font-size:.9em}
a{color:#0b61a4}
"""


def render_html(doc: Doc, images: dict[str, str]) -> str:
    """``images``: stem -> base64 PNG."""
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(doc.title)}</title>",
           f"<style>{CSS}</style></head><body><h1>{html.escape(doc.title)}</h1>"]
    for block in doc.blocks:
        kind = block[0]
        if kind == "h2":
            out.append(f"<h2>{html.escape(block[1])}</h2>")
        elif kind == "p":
            out.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{f'<b>{html.escape(a)}</b> ' if a else ''}{_html_cell(b)}</li>"
                                        for a, b in block[1]) + "</ul>")
        elif kind == "table":
            t: Table = block[1]
            head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
            body = "".join(
                "<tr>" + "".join(f"<td{' class=text' if _is_text(c) else ''}>"
                                 f"{_html_cell(c)}</td>" for c in row) + "</tr>"
                for row in t.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figure":
            stem, caption = block[1], block[2]
            if stem in images:
                out.append(f"<figure><img alt='{html.escape(stem)}' src='data:image/png;base64,{images[stem]}'>"
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def _is_text(cell: Cell) -> bool:
    """Left-align links and words; numbers stay right-aligned."""
    return not isinstance(cell, str) or cell[:1].isalpha()


def render_markdown(doc: Doc, images: dict[str, str]) -> str:
    """``images``: stem -> path of the PNG relative to the report."""
    out = [f"# {doc.title}", ""]
    for block in doc.blocks:
        kind = block[0]
        if kind == "h2":
            out += [f"## {block[1]}", ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "list":
            out += [f"- **{a}** {_md_cell(b)}" if a else f"- {_md_cell(b)}" for a, b in block[1]] + [""]
        elif kind == "table":
            t: Table = block[1]
            out.append("| " + " | ".join(_md_escape(h) for h in t.headers) + " |")
            out.append("|" + "|".join("---" for _ in t.headers) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            out.append("")
        elif kind == "figure":
            stem, caption = block[1], block[2]
            if stem in images:
                out += [f"![{caption}]({images[stem]})", "", f"*{caption}*", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ content


def _run_links(comp: Comparison, variant: str, ui_url: str | None) -> list[Link]:
    runs = comp.sweep.runs
    members = runs[runs["variant"] == variant].sort_values(["seed", "run_name"], kind="stable").index
    links = []
    for run_id in members:
        seed = runs.loc[run_id, "seed"]
        label = str(seed) if seed is not None and not (isinstance(seed, float) and math.isnan(seed)) \
            else str(runs.loc[run_id, "run_name"])
        links.append((label, run_url(ui_url, str(runs.loc[run_id, "experiment_id"]), str(run_id))))
    return links


def _experiments(run_ids: Sequence[str], comp: Comparison) -> list[str]:
    """The experiments these runs are in, most runs first (a sweep may span several)."""
    counts = comp.sweep.runs.loc[list(run_ids), "experiment_id"].astype(str).value_counts(sort=True)
    return list(counts.index) or list(comp.sweep.experiment_ids[:1])


def _variant_link(comp: Comparison, variant: str, ui_url: str | None) -> list[Link]:
    """The variant's name, linked to its experiment's runs page showing only the variant's runs (its seeds side by
    side in MLflow's charts)."""
    runs = comp.sweep.runs
    members = [str(r) for r in runs.index[runs["variant"] == variant] if r in comp.per_run.index]
    return [(variant, experiment_url(ui_url, _experiments(members, comp)[0], runs_filter(members)))]


def _range(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def build_doc(comp: Comparison, ui_url: str | None = None) -> Doc:
    """The report's content, independent of the output format."""
    sweep, summary = comp.sweep, comp.summary
    base = summary.loc[comp.baseline]
    doc = Doc(title=f"Sweep comparison: {sweep.target}")
    smoothing = f", smoothed with an EMA of {comp.curves.ema:g} over steps" if comp.curves.ema else ""
    # Experiments of the compared runs: a sweep looked up by id alone is searched for in every experiment.
    run_ids = [str(r) for r in comp.per_run.index]
    experiments = _experiments(run_ids, comp)
    parent_link = run_url(ui_url, experiments[0], sweep.parent_run_id) if sweep.parent_run_id else None
    # The sweep's runs in MLflow: by its tag when known (failed and dropped runs included), else exactly these runs.
    in_mlflow = (f"tags.`{names.TAG_SWEEP_ID}` = '{sweep.sweep_id}'" if sweep.sweep_id and len(experiments) == 1
                 else runs_filter(run_ids))
    variant_links = {v: _variant_link(comp, v, ui_url) for v in summary.index}
    seeds = summary["n"]
    doc.items([
        ("Store:", sweep.tracking_uri),
        ("MLflow UI:", [(ui_url, ui_url)] if ui_url else "— (no UI URL: pass --mlflow-url)"),
        ("Experiment ids:", [(e, experiment_url(ui_url, e)) for e in experiments]),
        ("Runs in MLflow:", [("this sweep's runs" if in_mlflow.startswith("tags.") else "these runs",
                              experiment_url(ui_url, experiments[0], in_mlflow))] if ui_url else "—"),
        ("Parent run:", [(sweep.parent_run_id or "—", parent_link)]),
        ("Runs:", f"{len(comp.curves.raw)} in {len(summary)} variants, {_range(seeds)} seeds each"
         + (f" ({len(comp.curves.skipped)} skipped: too few points)" if comp.curves.skipped else "")),
        ("Axes compared:", ", ".join(sweep.axes) or "none (variants are run names)"),
        ("Fixed:", ", ".join(f"{a}={v}" for a, v in sweep.fixed_axes.items()) or "—"),
        ("Metric:", f"{comp.curves.metric}{smoothing}, interpolated linearly in log FLOPs, never extrapolated"),
        ("Baseline:", comp.baseline),
        ("Shared budget:", f"{fmt_flops(comp.shared_budget)} FLOPs (the most every run reached)"),
        ("Generated:", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
    ])

    doc.h2("Verdict at the shared budget")
    doc.p(f"Each variant against the baseline {comp.baseline} at {fmt_flops(comp.shared_budget)} FLOPs. "
          f"Significance: Welch's t-test over seeds, alpha={comp.alpha:g}; a difference that is not significant is "
          "within noise, however large it looks.")
    verdicts = []
    for variant, row in summary.iterrows():
        if variant == comp.baseline:
            continue
        verdicts.append((f"{variant}:", f"loss {fmt_loss(row['mean'])} vs {fmt_loss(base['mean'])}, "
                         f"Δ {fmt_delta(row['diff'], base['mean'])}, compute multiplier "
                         f"{fmt_mult(row['multiplier'], row['flag'])}; {row['verdict']}."))
    doc.items(verdicts or [("Only one variant:", "nothing to compare.")])

    doc.h2("Ranking")
    doc.table(Table(
        ["rank", "variant", "runs (by seed)", "seeds", "loss (mean)", "95% CI", "Δ vs baseline", "multiplier",
         "p (Welch)", "p (Holm)", "verdict"],
        [[str(row["rank"]), variant_links[variant], _run_links(comp, variant, ui_url), str(row["n"]),
          fmt_loss(row["mean"]),
          f"{fmt_loss(row['ci_low'])} – {fmt_loss(row['ci_high'])}" if math.isfinite(row["ci_low"]) else "—",
          fmt_delta(row["diff"], base["mean"]), fmt_mult(row["multiplier"], row["flag"]), fmt_p(row["p_value"]),
          fmt_p(row["p_holm"]), row["verdict"]] for variant, row in summary.iterrows()],
    ))
    doc.figure("loss_vs_flops", f"{comp.curves.metric} against training FLOPs (log scale); each line is a variant's "
               "mean over seeds, the band spans its seeds, the grey area is past the shared budget.")

    doc.h2("Loss at equal-FLOP budgets")
    doc.p("Mean over seeds; — where a seed of that variant did not reach the budget (no extrapolation).")
    order = list(summary.index)
    doc.table(Table(["variant"] + [fmt_flops(b) for b in comp.budgets],
                    [[variant_links[v]] + [fmt_loss(comp.loss_at_budgets.loc[v, b]) for b in comp.budgets]
                     for v in order]))

    doc.h2("Compute multipliers")
    doc.p(f"The FLOPs the baseline {comp.baseline} needs to reach a variant's loss, divided by the variant's FLOPs: "
          "above 1 the variant is more compute-efficient (1.5× = the baseline needs 50% more compute). † where the "
          "baseline never got that low: then the budget divided by the FLOPs the variant needed to reach the "
          "baseline's loss at that budget. '>' marks a lower bound, '<' an upper bound (neither curve reached the "
          "other's loss).")
    doc.table(Table(["variant"] + [fmt_flops(b) for b in comp.budgets],
                    [[variant_links[v]] + [fmt_mult(comp.multipliers.loc[v, b], comp.multiplier_flags.loc[v, b])
                                           for b in comp.budgets] for v in order]))
    doc.figure("multipliers", f"Compute multiplier against {comp.baseline} at the shared budget.")

    if sweep.axes:
        doc.h2("Main effects")
        doc.p("For each axis, the loss at the shared budget at each value minus at the baseline's value, averaged "
              "over every combination of the other axes where both ran (matched pairs). Negative = lower loss. "
              "min/max: the range of those matched differences; a wide range means the effect depends on the "
              "other axes.")
        me = comp.main_effects
        doc.table(Table(["axis", "value", "vs", "effect", "± 2 se", "pairs", "min", "max"],
                        [[r.axis, r.value, r.reference, f"{r.effect:+.4f}" if math.isfinite(r.effect) else "—",
                          f"{2 * r.se:.4f}" if math.isfinite(r.se) else "—", str(r.n_pairs), fmt_loss(r.min_diff),
                          fmt_loss(r.max_diff)] for r in me.itertuples()]))
        doc.figure("main_effects", "Main effects: mean loss at each value of each axis over the other axes.")
        if len(sweep.axes) >= 2:
            doc.h2("Interactions")
            notable = comp.interactions[comp.interactions["notable"]]
            if notable.empty:
                doc.p(f"No two-axis interaction reaches {comp.interaction_threshold:.0%} of the larger main effect "
                      "(beyond 2 standard errors where seeds allow): the axes' effects add up.")
            else:
                doc.p("Two-axis interactions worth reporting: m(a,b) − m(a₀,b) − m(a,b₀) + m(a₀,b₀), where a₀, b₀ are "
                      "the baseline's values; 0 means the effects add up.")
                doc.table(Table(["axis a", "value", "axis b", "value", "interaction", "± 2 se", "n"],
                                [[r.axis_a, r.value_a, r.axis_b, r.value_b, f"{r.interaction:+.4f}",
                                  f"{2 * r.se:.4f}" if math.isfinite(r.se) else "—", str(r.n)]
                                 for r in notable.itertuples()]))

    doc.h2("Runs")
    runs = comp.sweep.runs
    rows = []
    for run_id in comp.per_run.sort_values(["variant", "seed"], kind="stable").index:
        f, loss = comp.curves.raw[run_id]
        rows.append([[(str(runs.loc[run_id, "run_name"]),
                       run_url(ui_url, str(runs.loc[run_id, "experiment_id"]), str(run_id)))],
                     variant_links[runs.loc[run_id, "variant"]], str(runs.loc[run_id, "seed"]),
                     str(runs.loc[run_id, "status"]),
                     fmt_flops(f[-1]), fmt_loss(loss[-1]), fmt_loss(comp.per_run.loc[run_id, comp.shared_budget])])
    doc.table(Table(["run", "variant", "seed", "status", "FLOPs reached", "last loss", "loss at shared budget"], rows))

    notes = list(comp.notes)
    notes.append("p (Holm) adjusts the Welch p-values for comparing several variants with one baseline; the verdicts "
                 "use the unadjusted p.")
    doc.h2("Notes")
    doc.items([("", n) for n in notes])
    doc.p("Files beside this report: curves.csv (every run on the common FLOP grid), summary.csv, "
          "loss_at_budgets.csv, multipliers.csv, main_effects.csv, interactions.csv, runs.csv, and the figures as PNG "
          "and SVG.")
    return doc


def write_report(comp: Comparison, out_dir: str, ui_url: str | None = None) -> dict[str, str]:
    """Write the report, figures and CSVs into ``out_dir``; returns name -> path (``html``, ``markdown``, ...)."""
    os.makedirs(out_dir, exist_ok=True)
    paths: dict[str, str] = {}
    images_b64, images_rel = {}, {}
    for stem, fig in make_figures(comp).items():
        saved = save_figure(fig, out_dir, stem)
        plt.close(fig)
        paths[f"{stem}.png"], paths[f"{stem}.svg"] = saved["png"], saved["svg"]
        with open(saved["png"], "rb") as fh:
            images_b64[stem] = base64.b64encode(fh.read()).decode("ascii")
        images_rel[stem] = f"{stem}.png"

    for name, frame in comp.csv_tables().items():
        path = os.path.join(out_dir, f"{name}.csv")
        frame.to_csv(path, index=isinstance(frame.index, pd.Index) and frame.index.name is not None)
        paths[f"{name}.csv"] = path

    doc = build_doc(comp, ui_url)
    paths["html"] = os.path.join(out_dir, "report.html")
    with open(paths["html"], "w", encoding="utf-8") as fh:
        fh.write(render_html(doc, images_b64))
    paths["markdown"] = os.path.join(out_dir, "report.md")
    with open(paths["markdown"], "w", encoding="utf-8") as fh:
        fh.write(render_markdown(doc, images_rel))
    return paths


def log_report(comp: Comparison, out_dir: str, artifact_path: str = names.ARTIFACT_PATH) -> str | None:
    """Log the report folder as artifacts of the sweep's parent run; returns the artifact URI, None without a
    parent run."""
    if not comp.sweep.parent_run_id:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=comp.sweep.tracking_uri)
    client.log_artifacts(comp.sweep.parent_run_id, out_dir, artifact_path)
    run = client.get_run(comp.sweep.parent_run_id)
    return f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
