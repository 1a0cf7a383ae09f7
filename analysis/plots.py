"""Figures (matplotlib, Agg): loss against FLOPs per variant with seed bands, compute multipliers, main effects."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display anywhere this runs

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from analysis.compare import Comparison

FORMATS = ("png", "svg")


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "viridis")
    return [cmap(i if n <= 20 else i / max(n - 1, 1)) for i in range(n)]


def _fmt_flops(x: float) -> str:
    return f"{x:.3g}"


def plot_loss_vs_flops(comp: Comparison) -> Figure:
    """One line per variant (mean over its seeds on the FLOP grid, log x); the band spans its seeds (min to max)."""
    table = comp.curves.table
    grid = comp.curves.grid
    runs = comp.sweep.runs
    variants = list(comp.summary.index)  # ranked, best first
    fig, ax = plt.subplots(figsize=(8.5, 5.2), layout="constrained")
    shown = []
    for variant, color in zip(variants, _colors(len(variants)), strict=True):
        members = [r for r in runs.index[runs["variant"] == variant] if r in table.index]
        values = table.loc[members].to_numpy()
        mean = values.mean(axis=0)  # NaN where any seed has not reached (or not started)
        is_base = variant == comp.baseline
        label = f"{variant} (baseline)" if is_base else variant
        ax.plot(grid, mean, color="black" if is_base else color, lw=2.2 if is_base else 1.4, label=label)
        if len(members) > 1:
            ax.fill_between(grid, values.min(axis=0), values.max(axis=0), color="black" if is_base else color,
                            alpha=0.15, lw=0)
        shown.append(mean)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    smoothing = f", EMA {comp.curves.ema:g}" if comp.curves.ema else ""
    ax.set_ylabel(f"{comp.curves.metric}{smoothing}")
    ax.set_title(f"{comp.sweep.target}: {comp.curves.metric} at equal FLOPs (band: min–max over seeds)")
    ax.axvspan(comp.shared_budget, grid[-1], color="0.9", zorder=0)
    ax.grid(True, which="both", alpha=0.3)
    _focus_y(ax, grid, np.asarray(shown))
    ax.legend(fontsize=8 if len(variants) <= 12 else 6, ncol=1 if len(variants) <= 12 else 2, loc="upper right")
    return fig


def _focus_y(ax, grid: np.ndarray, curves: np.ndarray) -> None:
    """Show the part that matters: from the lowest loss up to the highest loss a quarter of the way into the grid."""
    finite = curves[np.isfinite(curves)]
    if finite.size == 0:
        return
    quarter = int(len(grid) * 0.25)
    top = np.nanmax(curves[:, quarter:]) if np.isfinite(curves[:, quarter:]).any() else finite.max()
    low = finite.min()
    pad = 0.05 * (top - low) if top > low else 0.05 * abs(low) + 1e-3
    ax.set_ylim(low - pad, top + pad)


def plot_multipliers(comp: Comparison) -> Figure:
    """Compute multiplier of each variant against the baseline at the shared budget (bars; 1 = the baseline)."""
    frame = comp.summary
    variants = [v for v in frame.index]
    values = frame["multiplier"].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(8.0, 0.45 * len(variants) + 1.6), layout="constrained")
    y = np.arange(len(variants))
    colors = ["black" if v == comp.baseline else ("tab:green" if m >= 1 else "tab:red")
              for v, m in zip(variants, values, strict=True)]
    ax.barh(y, np.nan_to_num(values, nan=1.0) - 1.0, left=1.0, color=colors, alpha=0.8)  # bars grow from 1
    ax.axvline(1.0, color="black", lw=1)
    for yi, (m, flag) in enumerate(zip(values, frame["flag"], strict=True)):
        if np.isfinite(m):
            label = f"{m:.2f}×†" if flag == "reverse" else f"{flag}{m:.2f}×"
            ax.text(m, yi, f" {label} ", va="center", fontsize=8, ha="left" if m >= 1 else "right")
    ax.set_yticks(y, [f"{v} (baseline)" if v == comp.baseline else v for v in variants], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"compute multiplier vs {comp.baseline} at {_fmt_flops(comp.shared_budget)} FLOPs (>1: more "
                  "efficient)")
    ax.set_title("Compute multiplier: baseline FLOPs to match / variant FLOPs")
    finite = values[np.isfinite(values) & (values > 0)]
    if finite.size:
        lo, hi = min(finite.min(), 1.0), max(finite.max(), 1.0)
        ax.set_xlim(lo / 1.25, hi * 1.6)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return fig


def plot_main_effects(comp: Comparison) -> Figure | None:
    """One panel per axis: mean loss at the shared budget at each value (bars span the other axes' min to max)."""
    axes_names = comp.sweep.axes
    if not axes_names:
        return None
    mm = comp.marginal_means
    # At least as wide as the suptitle: with one axis a 4-inch figure cut the title off at both ends.
    fig, axs = plt.subplots(1, len(axes_names), figsize=(max(3.2 * len(axes_names) + 0.8, 6.4), 3.6), sharey=True,
                            layout="constrained", squeeze=False)
    for ax, axis in zip(axs[0], axes_names, strict=True):
        part = mm[mm["axis"] == axis]
        ref = comp.main_effects.loc[comp.main_effects["axis"] == axis, "reference"]
        if len(ref):  # the baseline's value first
            part = part.assign(_ref=part["value"] != ref.iloc[0]).sort_values("_ref", kind="stable")
        x = np.arange(len(part))
        mean = part["mean"].to_numpy(dtype=float)
        err = np.vstack([mean - part["min"].to_numpy(dtype=float), part["max"].to_numpy(dtype=float) - mean])
        ax.errorbar(x, mean, yerr=err, marker="o", capsize=4, color="tab:blue")
        ax.set_xticks(x, part["value"].tolist(), rotation=30 if len(part) > 3 else 0, fontsize=8)
        ax.set_title(axis)
        ax.set_xlim(-0.4, len(part) - 0.6)
        ax.grid(True, axis="y", alpha=0.3)
    axs[0][0].set_ylabel(f"{comp.curves.metric} at {_fmt_flops(comp.shared_budget)} FLOPs")
    fig.suptitle("Main effects (mean over the other axes; bars: their min–max)")
    return fig


def save_figure(fig: Figure, out_dir: str, name: str, formats: tuple[str, ...] = FORMATS, dpi: int = 110
                ) -> dict[str, str]:
    """Write ``name.png`` / ``name.svg`` into ``out_dir``; returns format -> path. The figure stays open."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text stays text: smaller, faster, searchable
        for i, fmt in enumerate(formats):
            path = os.path.join(out_dir, f"{name}.{fmt}")
            fig.savefig(path, dpi=dpi)
            if i == 0 and fig.get_layout_engine() is not None:
                fig.set_layout_engine("none")  # laid out once: the next formats reuse it
            paths[fmt] = path
    return paths


def make_figures(comp: Comparison) -> dict[str, Figure]:
    """All figures of a comparison, by file stem."""
    figs = {"loss_vs_flops": plot_loss_vs_flops(comp), "multipliers": plot_multipliers(comp)}
    effects = plot_main_effects(comp)
    if effects is not None:
        figs["main_effects"] = effects
    return figs
