"""analysis/: sweeps with known synthetic curves logged into a real MLflow sqlite store, read back and compared.

Curves are power laws ``a + b * flops**-alpha`` (+ known offsets), so every answer is known exactly: loss at a
budget, compute multipliers ((b_base / b) ** (1 / alpha) for the same a and alpha), main effects and
interactions of a 2x2 grid, seeds' intervals and the t-test's verdicts.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from analysis import (
    AnalysisError,
    align,
    analyse,
    ema,
    interpolate,
    load_sweep,
    names,
    write_report,
)
from analysis.plots import plot_loss_vs_flops, plot_main_effects, plot_multipliers, save_figure
from analysis.report import log_report, run_url
from analysis.stats import holm, mean_interval, welch
from analysis.synthetic import SynthRun, empty_store, log_sweep
from analysis.tables import flops_to_reach

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Power-law sweep: same a and alpha, different b: the multiplier against rope is (b_rope / b) ** (1 / alpha).
ALPHA, A = 0.5, 2.0
B = {"rope": 3.0e6, "alibi": 2.5e6, "learned": 3.6e6}
# rope runs 400 steps (4e14 FLOPs), alibi 200 (2e14), learned 200 steps of 1.5e12 (3e14): shared budget 2e14.
PL_STEPS = {"rope": (400, 1e12), "alibi": (200, 1e12), "learned": (200, 1.5e12)}

# 2x2 factorial with additive effects (one seed), and one with an interaction in the (alibi, layernorm) cell.
POS_EFFECT, NORM_EFFECT, INTERACTION = 0.05, -0.03, 0.04

# Seeds: baseline rope, alibi clearly better, learned within noise; per-seed offsets with known spread.
SEED_OFFSETS = np.array([-0.02, -0.01, 0.0, 0.01, 0.02])
SEED_SHIFT = {"rope": 0.0, "alibi": -0.1, "learned": 0.002}


def _factorial(interaction: float) -> list[SynthRun]:
    runs = []
    for pos in ("rope", "alibi"):
        for norm in ("rms", "layernorm"):
            offset = (POS_EFFECT if pos == "alibi" else 0) + (NORM_EFFECT if norm == "layernorm" else 0)
            offset += interaction if (pos, norm) == ("alibi", "layernorm") else 0
            runs.append(SynthRun(tags={"pos": pos, "norm": norm}, a=A, b=3e6, alpha=ALPHA, offset=offset,
                                 steps=100, eval_every=5))
    return runs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store, several sweeps: {"uri", "<sweep>": log_sweep's answer, "artifacts": folder}."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = empty_store(str(root / "mlflow.db"))
    art = str(root / "artifacts")
    out = {"uri": uri, "artifacts": art}
    out["pl"] = log_sweep(uri, "powerlaw", [
        SynthRun(tags={"pos": p}, a=A, b=B[p], alpha=ALPHA, steps=PL_STEPS[p][0], flops_per_step=PL_STEPS[p][1],
                 eval_every=1, noise=0.05) for p in B], sweep_id="pl", artifact_location=art)
    out["fx"] = log_sweep(uri, "factorial", _factorial(0.0), sweep_id="fx", artifact_location=art)
    out["fxi"] = log_sweep(uri, "factorial", _factorial(INTERACTION), sweep_id="fxi", artifact_location=art)
    out["sd"] = log_sweep(uri, "seeds", [
        SynthRun(tags={"pos": p}, a=A, b=3e6, alpha=ALPHA, offset=SEED_SHIFT[p] + SEED_OFFSETS[(k + i) % 5],
                 seed=k, steps=60, eval_every=5, noise=0.03)
        for i, p in enumerate(SEED_SHIFT) for k in range(5)], sweep_id="sd", artifact_location=art)
    out["lr"] = log_sweep(uri, "lr", [
        SynthRun(tags={}, params={"optim.lr": lr}, b=b, alpha=ALPHA, seed=k, steps=40, eval_every=None,
                 offset=0.01 * k) for lr, b in (("0.001", 3e6), ("0.003", 2.8e6)) for k in range(2)],
        sweep_id="lr", artifact_location=art)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("empty", artifact_location=art)
    # a sweep with a run that failed early and one that failed before logging anything
    out["st"] = log_sweep(uri, "status", [SynthRun(tags={"pos": p}, steps=s, eval_every=None, seed=k)
                                          for p, s, k in (("rope", 50, 0), ("alibi", 50, 0), ("alibi", 10, 1))],
                          sweep_id="st", artifact_location=art)
    client.set_terminated(out["st"]["run_ids"][2], "FAILED")
    empty_run = client.create_run(out["st"]["experiment_id"], tags={
        names.TAG_SWEEP_ID: "st", "pos": "rope", names.TAG_PARENT_RUN_ID: out["st"]["parent_run_id"]})
    client.set_terminated(empty_run.info.run_id, "FAILED")
    out["st"]["empty_run"] = empty_run.info.run_id
    return out


@pytest.fixture(scope="module")
def pl(store):
    return analyse(load_sweep(store["uri"], sweep_id="pl"), baseline="pos=rope", budgets=[3e13, 1.2e14, 3e14])


def power_law(pos: str, flops):
    return A + B[pos] * np.asarray(flops, dtype=float) ** -ALPHA


# ------------------------------------------------------------------------------------------------ loading


def test_load_by_sweep_parent_experiment_and_latest(store):
    uri = store["uri"]
    by_sweep = load_sweep(uri, sweep_id="pl")
    assert len(by_sweep.runs) == 3  # the parent run is not a variant
    assert by_sweep.parent_run_id == store["pl"]["parent_run_id"]
    assert by_sweep.axes == ["pos"] and by_sweep.variants == ["pos=alibi", "pos=learned", "pos=rope"]
    assert set(by_sweep.runs.index) == set(store["pl"]["run_ids"])
    by_parent = load_sweep(uri, parent_run_id=store["pl"]["parent_run_id"])
    assert set(by_parent.runs.index) == set(by_sweep.runs.index) and by_parent.sweep_id == "pl"
    by_exp = load_sweep(uri, experiment="factorial")  # two sweeps in one experiment
    assert len(by_exp.runs) == 8 and by_exp.parent_run_id is None
    by_id = load_sweep(uri, experiment=store["fx"]["experiment_id"])
    assert set(by_id.runs.index) == set(by_exp.runs.index)
    latest = load_sweep(uri)  # the last sweep logged
    assert latest.parent_run_id == store["st"]["parent_run_id"]
    assert {names.TRAIN_LOSS, names.TRAIN_FLOPS, names.EVAL_LOSS} <= set(by_sweep.available_metrics)


def test_seeds_and_explicit_axes(store):
    sweep = load_sweep(store["uri"], sweep_id="sd")
    assert sweep.runs.groupby("variant")["seed"].apply(sorted).tolist() == [list(range(5))] * 3
    assert load_sweep(store["uri"], sweep_id="sd", axes=["pos"]).variants == sweep.variants
    with pytest.raises(AnalysisError, match=r"^axes='nope' is not a tag of these runs; allowed: .*'pos'"):
        load_sweep(store["uri"], sweep_id="sd", axes=["nope"])


def test_runs_by_status_and_runs_without_flops(store):
    every = load_sweep(store["uri"], sweep_id="st")
    assert len(every.runs) == 3 and every.dropped == [store["st"]["empty_run"]]
    comp = analyse(every, baseline="pos=rope")
    assert comp.shared_budget == pytest.approx(10e12)  # the failed run stopped at step 10
    assert any("no train/flops" in note for note in comp.notes)
    finished = load_sweep(store["uri"], sweep_id="st", statuses=["finished"])
    assert len(finished.runs) == 2 and finished.dropped == []
    assert analyse(finished, baseline="pos=rope").shared_budget == pytest.approx(50e12)
    with pytest.raises(AnalysisError, match=r"^status='DONE' is invalid; allowed: 'RUNNING', .*'FINISHED'"):
        load_sweep(store["uri"], sweep_id="st", statuses=["done"])


def test_swept_param_without_axis_tag_becomes_an_axis(store):
    sweep = load_sweep(store["uri"], sweep_id="lr")
    assert sweep.axes == ["optim.lr"]  # train.seed and train.save_folder vary too, but are no axis
    assert sweep.variants == ["optim.lr=0.001", "optim.lr=0.003"]
    assert sweep.runs.groupby("variant").size().tolist() == [2, 2]


def test_metrics_joined_to_flops_by_step(store):
    sweep = load_sweep(store["uri"], sweep_id="pl")
    hist = sweep.history(names.EVAL_LOSS)
    run = sweep.runs.index[sweep.runs["variant"] == "pos=learned"][0]
    mine = hist[hist["run_id"] == run]
    assert len(mine) == 200
    np.testing.assert_allclose(mine["flops"], mine["step"] * 1.5e12)
    np.testing.assert_allclose(mine["value"], power_law("learned", mine["flops"]))


def test_sql_fast_path_and_client_api_agree(store):
    sql = load_sweep(store["uri"], sweep_id="sd", loader="sql")
    api = load_sweep(store["uri"], sweep_id="sd", loader="client")
    for key in (names.TRAIN_FLOPS, names.TRAIN_LOSS, names.EVAL_LOSS):
        assert set(sql.series[key]) == set(api.series[key]) == set(sql.run_ids)
        for run_id, (steps, values) in sql.series[key].items():
            np.testing.assert_array_equal(steps, api.series[key][run_id][0])
            np.testing.assert_array_equal(values, api.series[key][run_id][1])


# ------------------------------------------------------------------------------------------------ alignment


def test_interpolation_is_exact_for_lines_in_log_flops_and_never_extrapolates():
    flops = np.array([1e12, 1e13, 1e14])
    loss = 5.0 - 0.5 * np.log10(flops)  # a straight line in log FLOPs
    at = np.array([5e11, 1e12, 3.16e12, 2e13, 1e14, 1.01e14])
    got = interpolate(flops, loss, at)
    np.testing.assert_allclose(got[1:5], 5.0 - 0.5 * np.log10(at[1:5]))
    assert np.isnan(got[0]) and np.isnan(got[5])


def test_common_log_grid_and_curves(pl):
    curves = pl.curves
    assert curves.metric == names.EVAL_LOSS and curves.ema == 0.0  # eval loss everywhere: no smoothing
    grid = curves.grid
    assert len(grid) == 256 and grid[0] == pytest.approx(1e12) and grid[-1] == pytest.approx(4e14)
    np.testing.assert_allclose(np.diff(np.log(grid)), np.log(400) / 255)
    runs = pl.sweep.runs
    for variant, pos in (("pos=rope", "rope"), ("pos=alibi", "alibi"), ("pos=learned", "learned")):
        run = runs.index[runs["variant"] == variant][0]
        row = curves.table.loc[run].to_numpy()
        end = PL_STEPS[pos][0] * PL_STEPS[pos][1]
        inside = (grid >= PL_STEPS[pos][1]) & (grid <= end)
        assert np.isnan(row[~inside]).all()  # no extrapolation past a run's end (or before its start)
        dense = inside & (grid >= 2e13)  # where logged points are close in log FLOPs (first steps are far apart)
        np.testing.assert_allclose(row[dense], power_law(pos, grid[dense]), rtol=1e-4)
    assert pl.shared_budget == pytest.approx(2e14)
    long = pl.curves_frame()
    assert list(long.columns) == ["run_id", "run_name", "variant", "seed", "pos", "metric", "flops", "loss"]
    assert long["loss"].notna().all()


def test_ema_matches_the_definition_and_smooths_train_loss(store):
    x = np.array([4.0, 2.0, 3.0, 1.0])
    beta = 0.5
    s, expected = 0.0, []
    for t, v in enumerate(x, start=1):
        s = beta * s + (1 - beta) * v
        expected.append(s / (1 - beta**t))
    np.testing.assert_allclose(ema(x, beta), expected)
    np.testing.assert_allclose(ema(np.full(50, 3.0), 0.9), 3.0)  # bias-corrected: no warm-up dip
    np.testing.assert_array_equal(ema(x, 0.0), x)

    sweep = load_sweep(store["uri"], sweep_id="pl")
    raw = align(sweep, metric=names.TRAIN_LOSS, ema_beta=0.0)
    smooth = align(sweep, metric=names.TRAIN_LOSS, ema_beta=0.9)
    assert smooth.metric == names.TRAIN_LOSS and smooth.ema == 0.9
    run = sweep.runs.index[sweep.runs["variant"] == "pos=rope"][0]
    f, noisy = raw.raw[run]
    _, smoothed = smooth.raw[run]
    late = f > 1e14
    truth = power_law("rope", f[late])
    assert np.std(smoothed[late] - truth) < 0.5 * np.std(noisy[late] - truth)


# ------------------------------------------------------------------------------------------------ tables


def test_loss_at_budgets_matches_the_power_laws(pl):
    table = pl.loss_at_budgets
    assert pl.budgets == [3e13, 1.2e14, 2e14, 3e14]  # the shared budget joins the asked ones (all at logged steps)
    for pos in B:
        for budget in (3e13, 1.2e14, 2e14):
            assert table.loc[f"pos={pos}", budget] == pytest.approx(power_law(pos, budget), rel=1e-6)
    assert table.loc["pos=rope", 3e14] == pytest.approx(power_law("rope", 3e14), rel=1e-6)
    assert math.isnan(table.loc["pos=alibi", 3e14])  # alibi stopped at 2e14: no extrapolation
    assert table.loc["pos=learned", 3e14] == pytest.approx(power_law("learned", 3e14), rel=1e-9)


def test_compute_multipliers_are_the_analytic_ones(pl):
    m = pl.multipliers
    for pos in B:
        expected = (B["rope"] / B[pos]) ** (1 / ALPHA)  # 1.44 for alibi, 0.694 for learned
        for budget in (3e13, 1.2e14, 2e14):
            assert m.loc[f"pos={pos}", budget] == pytest.approx(expected, rel=1e-3), (pos, budget)
            assert pl.multiplier_flags.loc[f"pos={pos}", budget] == ""  # rope ran long enough: measured directly
    # at 3e14 alibi has no loss; learned's loss is reached by rope at 0.694 * 3e14, inside rope's range
    assert math.isnan(m.loc["pos=alibi", 3e14])
    assert m.loc["pos=learned", 3e14] == pytest.approx((B["rope"] / B["learned"]) ** 2, rel=1e-3)


def test_multiplier_from_the_variants_side_when_the_baseline_stops_too_early(store):
    # learned stops at 3e14; alibi's loss at 2e14 takes learned 2e14 * (3.6/2.5)**2 = 4.1e14: out of reach, so the
    # multiplier is 2e14 / (the FLOPs alibi needed to reach learned's loss at 2e14), the same 2.07 for power laws
    comp = analyse(load_sweep(store["uri"], sweep_id="pl"), baseline="pos=learned", budgets=[2e14])
    assert comp.multipliers.loc["pos=alibi", 2e14] == pytest.approx((B["learned"] / B["alibi"]) ** 2, rel=1e-3)
    assert comp.multiplier_flags.loc["pos=alibi", 2e14] == "reverse"
    assert comp.summary.loc["pos=alibi", "flag"] == "reverse"
    assert comp.multipliers.loc["pos=rope", 2e14] == pytest.approx((B["learned"] / B["rope"]) ** 2, rel=1e-3)


def test_flops_to_reach_bounds():
    f = np.array([1.0, 10.0, 100.0])
    loss = np.array([3.0, 2.0, 1.0])
    assert flops_to_reach(f, loss, 2.0) == (pytest.approx(10.0), "")
    assert flops_to_reach(f, loss, 1.5)[0] == pytest.approx(math.sqrt(10) * 10)
    assert flops_to_reach(f, loss, 0.5) == (100.0, ">")  # never that low: a lower bound
    assert flops_to_reach(f, loss, 3.5) == (1.0, "<")  # lower already at the start: an upper bound
    assert flops_to_reach(f, np.array([3.0, 1.0, 2.0]), 1.5)[1] == ""  # the running minimum, not a later bump


def test_baseline_by_name_filter_value_or_run(store):
    sweep = load_sweep(store["uri"], sweep_id="fx")
    run_id = sweep.runs.index[sweep.runs["variant"] == "pos=alibi,norm=rms"][0]
    for spec in ("pos=alibi,norm=rms", "norm=rms, pos=alibi", run_id, sweep.runs.loc[run_id, "run_name"]):
        assert analyse(sweep, baseline=spec).baseline == "pos=alibi,norm=rms", spec
    assert analyse(load_sweep(store["uri"], sweep_id="pl"), baseline="learned").baseline == "pos=learned"


def test_ranking(pl):
    s = pl.summary
    assert list(s.index) == ["pos=alibi", "pos=rope", "pos=learned"]
    assert s["rank"].tolist() == [1, 2, 3]
    assert s.loc["pos=alibi", "gap_to_best"] == 0.0
    assert s.loc["pos=rope", "diff"] == 0.0 and s.loc["pos=rope", "verdict"] == "baseline"
    assert s.loc["pos=alibi", "verdict"].startswith("not testable")  # one seed each


def test_main_effects_of_an_additive_2x2(store):
    comp = analyse(load_sweep(store["uri"], sweep_id="fx"), baseline="pos=rope,norm=rms")
    me = comp.main_effects.set_index("axis")
    assert me.loc["pos", "value"] == "alibi" and me.loc["pos", "reference"] == "rope"
    assert me.loc["pos", "effect"] == pytest.approx(POS_EFFECT, abs=1e-9)
    assert me.loc["norm", "effect"] == pytest.approx(NORM_EFFECT, abs=1e-9)
    assert me["n_pairs"].tolist() == [2, 2]
    inter = comp.interactions
    assert len(inter) == 1 and inter["interaction"].abs().max() < 1e-9 and not inter["notable"].any()
    mm = comp.marginal_means.set_index(["axis", "value"])
    assert mm.loc[("pos", "alibi"), "mean"] - mm.loc[("pos", "rope"), "mean"] == pytest.approx(POS_EFFECT)


def test_interaction_worth_reporting(store):
    comp = analyse(load_sweep(store["uri"], sweep_id="fxi"), baseline="pos=rope,norm=rms")
    row = comp.interactions.iloc[0]
    assert row["interaction"] == pytest.approx(INTERACTION, abs=1e-9) and row["notable"]
    me = comp.main_effects.set_index("axis")
    assert me.loc["pos", "effect"] == pytest.approx(POS_EFFECT + INTERACTION / 2, abs=1e-9)
    assert me.loc["pos", "min_diff"] == pytest.approx(POS_EFFECT, abs=1e-9)
    assert me.loc["pos", "max_diff"] == pytest.approx(POS_EFFECT + INTERACTION, abs=1e-9)


# ------------------------------------------------------------------------------------------------ seeds


def test_seed_intervals_and_verdicts(store):
    comp = analyse(load_sweep(store["uri"], sweep_id="sd"), baseline="pos=rope")
    s = comp.summary
    base_loss = A + 3e6 * comp.shared_budget ** -ALPHA
    half = 2.7764451051977987 * SEED_OFFSETS.std(ddof=1) / math.sqrt(5)  # t(0.975, 4) * s / sqrt(n)
    for pos, shift in SEED_SHIFT.items():
        row = s.loc[f"pos={pos}"]
        assert row["n"] == 5
        assert row["mean"] == pytest.approx(base_loss + shift, abs=1e-9)
        assert row["ci_high"] - row["mean"] == pytest.approx(half, rel=1e-6)
        assert row["mean"] - row["ci_low"] == pytest.approx(half, rel=1e-6)
    assert s.loc["pos=alibi", "p_value"] < 1e-4 and s.loc["pos=alibi", "significant"]
    assert s.loc["pos=alibi", "verdict"].startswith("better than baseline")
    assert s.loc["pos=learned", "p_value"] > 0.5 and not s.loc["pos=learned", "significant"]
    assert s.loc["pos=learned", "verdict"].startswith("within noise")
    # rope never gets as low as alibi within its 60 steps: measured from alibi's side, where alibi reached rope's
    # loss at the shared budget F: 3e6 * F'**-0.5 - 0.1 = 3e6 * F**-0.5
    f = comp.shared_budget
    reach = (f**-0.5 + 0.1 / 3e6) ** -2
    assert s.loc["pos=alibi", "flag"] == "reverse"
    assert s.loc["pos=alibi", "multiplier"] == pytest.approx(f / reach, rel=5e-3)
    assert s.loc["pos=learned", "multiplier"] < 1 and s.loc["pos=learned", "flag"] == ""


def test_stats_helpers():
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert (mean, high - mean) == (2.0, pytest.approx(4.302652729911275 / math.sqrt(3)))
    assert math.isnan(mean_interval([1.0])[1])
    assert math.isnan(welch([1.0], [1.0, 2.0]))
    assert welch([1.0, 1.0], [2.0, 2.0]) == 0.0 and welch([1.0, 1.0], [1.0, 1.0]) == 1.0
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])


# ------------------------------------------------------------------------------------------------ figures, report


def test_figures_have_one_line_per_variant_and_are_valid_images(pl, store, tmp_path):
    from PIL import Image

    fig = plot_loss_vs_flops(pl)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3
    assert sorted(line.get_label().replace(" (baseline)", "") for line in ax.get_lines()) == pl.sweep.variants
    assert ax.get_xscale() == "log"
    paths = save_figure(fig, str(tmp_path), "loss")
    with open(paths["png"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(paths["png"]) as img:
        img.verify()
    with Image.open(paths["png"]) as img:
        assert img.size == (int(8.5 * 110), int(5.2 * 110))
    assert ET.parse(paths["svg"]).getroot().tag.endswith("svg")

    bars = plot_multipliers(pl)
    assert len(bars.axes[0].patches) == 3
    assert plot_main_effects(pl).axes[0].get_title() == "pos"
    fx = analyse(load_sweep(store["uri"], sweep_id="fx"), baseline="pos=rope,norm=rms")
    panels = plot_main_effects(fx)
    assert [a.get_title() for a in panels.axes] == ["pos", "norm"]
    assert len(plot_loss_vs_flops(fx).axes[0].get_lines()) == 4


def test_report_names_every_variant_and_holds_the_tables(store, tmp_path):
    comp = analyse(load_sweep(store["uri"], sweep_id="sd"), baseline="pos=rope")
    paths = write_report(comp, str(tmp_path), ui_url="http://mlflow.example:5000/")
    page = open(paths["html"], encoding="utf-8").read()
    for variant in comp.variants:
        assert variant in page
    for heading in ("Ranking", "Loss at equal-FLOP budgets", "Compute multipliers", "Main effects", "Runs"):
        assert f"<h2>{heading}</h2>" in page
    assert page.count("<table>") >= 5 and "data:image/png;base64," in page
    run_id = comp.sweep.run_ids[0]
    exp_id = comp.sweep.runs.loc[run_id, "experiment_id"]
    assert f'href="http://mlflow.example:5000/#/experiments/{exp_id}/runs/{run_id}"' in page
    assert "within noise" in page and "better than baseline" in page
    md = open(paths["markdown"], encoding="utf-8").read()
    assert "| rank | variant |" in md and "![" in md and all(v in md for v in comp.variants)
    for name in ("loss_vs_flops.png", "loss_vs_flops.svg", "multipliers.png", "main_effects.svg", "curves.csv"):
        assert os.path.getsize(tmp_path / name) > 0
    import pandas as pd

    curves = pd.read_csv(tmp_path / "curves.csv")
    assert set(curves["variant"]) == set(comp.variants) and len(curves) == len(comp.curves.long())
    assert run_url(None, "1", "x") is None

    uri = log_report(comp, str(tmp_path))
    from mlflow.tracking import MlflowClient

    listed = {a.path for a in MlflowClient(store["uri"]).list_artifacts(comp.sweep.parent_run_id, "analysis")}
    assert "analysis/report.html" in listed and uri.endswith("/analysis")


# ------------------------------------------------------------------------------------------------ errors


def test_clear_one_line_errors(store, tmp_path):
    uri = store["uri"]
    cases = [
        (lambda: load_sweep(uri, experiment="empty"), r"^experiment='empty' has no runs; allowed: "),
        (lambda: load_sweep(uri, experiment="nope"), r"^experiment='nope' is not in the store; allowed: .*'powerlaw'"),
        (lambda: load_sweep(uri, sweep_id="nope"), r"^sweep='nope' is not in the store; allowed: .*'fx'"),
        (lambda: load_sweep(uri, parent_run_id="0" * 32), r"^parent_run='0{32}' is not a run in the store"),
        (lambda: analyse(load_sweep(uri, sweep_id="pl"), metric="train/los"),
         r"^metric='train/los' is not logged by these runs; allowed: 'auto', 'eval/loss'.*'train/loss'"),
        (lambda: analyse(load_sweep(uri, sweep_id="pl"), baseline="pos=nope"),
         r"^baseline='pos=nope' is not in the sweep; allowed: a variant \('pos=alibi', 'pos=learned', 'pos=rope'\)"),
        (lambda: analyse(load_sweep(uri, sweep_id="pl"), baseline="rotary"), r"^baseline='rotary' is not in the sweep"),
        (lambda: analyse(load_sweep(uri, sweep_id="pl"), baseline="norm=rms"), r"^baseline='norm=rms' names no axis"),
        (lambda: analyse(load_sweep(uri, sweep_id="fx"), baseline="pos=rope"),
         r"^baseline='pos=rope' is ambiguous; allowed: a filter matching one variant \(it matches pos=rope,norm="),
        (lambda: analyse(load_sweep(uri, sweep_id="pl"), budgets="1e14,abc"), r"^budgets='1e14,abc' is invalid"),
        (lambda: analyse(load_sweep(uri, sweep_id="pl"), budgets=[-1.0]), r"^budgets=\[-1.0\] is invalid"),
        (lambda: analyse(load_sweep(uri, sweep_id="pl"), ema=1.0), r"^ema=1.0 is invalid; allowed: a smoothing"),
        (lambda: load_sweep(f"sqlite:///{tmp_path}/missing.db"), r"^tracking_uri='sqlite:///.*' does not exist"),
    ]
    for call, pattern in cases:
        with pytest.raises(AnalysisError, match=pattern) as info:
            call()
        assert "\n" not in str(info.value)
    assert not (tmp_path / "missing.db").exists()  # a typo'd store is not created


# ------------------------------------------------------------------------------------------------ command line


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.compare", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_cli_end_to_end(store, tmp_path):
    out = tmp_path / "report"
    proc = _cli("--tracking-uri", store["uri"], "--sweep", "fx", "--baseline", "pos=rope,norm=rms", "--budgets",
                "1e13,5e13", "--ema", "0.8", "--out", str(out), "--ui-url", "http://localhost:5000")
    assert proc.returncode == 0, proc.stderr
    assert "pos=alibi,norm=layernorm" in proc.stdout and "report:" in proc.stdout and "logged:" in proc.stdout
    for name in ("report.html", "report.md", "curves.csv", "loss_vs_flops.png", "multipliers.svg",
                 "main_effects.png", "summary.csv"):
        assert (out / name).is_file(), name
    from mlflow.tracking import MlflowClient

    listed = {a.path for a in MlflowClient(store["uri"]).list_artifacts(store["fx"]["parent_run_id"], "analysis")}
    assert "analysis/report.md" in listed


def test_cli_errors_are_one_line(store, tmp_path):
    proc = _cli("--sweep", "pl", "--baseline", "pos=nope", "--no-log", "--out", str(tmp_path),
                env={names.TRACKING_URI_ENV: store["uri"]})  # the store from the environment
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: baseline='pos=nope' is not in the sweep; allowed:")

def test_cli_main_in_process(store, capsys):
    from analysis.compare import main

    assert main(["--tracking-uri", store["uri"], "--experiment", "empty"]) == 2
    assert capsys.readouterr().err.startswith("error: experiment='empty' has no runs")
    assert main(["--tracking-uri", store["uri"], "--sweep", "sd", "--metric", "eval/los", "--no-log"]) == 2
    assert capsys.readouterr().err.startswith("error: metric='eval/los' is not logged by these runs; allowed: 'auto'")
