"""Benchmark: load and analyse a sweep of 100 runs x 2,000 steps from an MLflow sqlite store (target: under 10 s).

    python benchmarks/bench_analysis.py             # 100 runs x 2,000 steps, 5 repeats (builds the store once, ~3 min)
    python benchmarks/bench_analysis.py --quick     # 8 runs x 200 steps, 1 repeat (the smoke test)

The store is a synthetic factorial sweep (pos x init, several seeds; train/loss, train/flops, train/tokens at every
step, eval/loss and eval/perplexity every 100 steps) logged with the real MLflow client in batches of 1,000 and
cached in --store-dir, so later runs only measure. Phases, each timed separately (median over repeats):
load by SQL (one query on the metrics table) and by the client API (get_metric_history per run and metric),
analyse (align on the FLOP grid, tables, statistics, effects) on eval loss and on EMA-smoothed train loss,
the report (figures, HTML, Markdown, CSVs), and end to end (load by SQL + analyse + report).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from analysis import names  # noqa: E402
from analysis.compare import analyse  # noqa: E402
from analysis.load import load_sweep  # noqa: E402
from analysis.report import write_report  # noqa: E402
from analysis.synthetic import SynthRun, empty_store, log_sweep  # noqa: E402

POS = {"rope": 0.0, "alibi": 0.02, "learned": 0.05, "none": 0.09}
INIT = {"normal": 0.0, "mitchell": -0.01, "megatron": 0.015, "kaiming_normal": 0.03, "fan_in": -0.005}


def sweep_runs(runs: int, steps: int, seeds: int, eval_every: int) -> list[SynthRun]:
    cells = list(itertools.product(POS, INIT))[: max(1, runs // seeds)]
    out = []
    for k, (pos, init) in enumerate(cells):
        for seed in range(seeds):
            out.append(SynthRun(
                tags={"pos": pos, "init": init}, a=2.0, b=3e6, alpha=0.5, offset=POS[pos] + INIT[init] + 0.004 * seed,
                noise=0.05, steps=steps, flops_per_step=1e12 * (1 + 0.02 * k), eval_every=eval_every, seed=seed,
            ))
    return out[:runs]


def build_store(store_dir: str, runs: int, steps: int, seeds: int, eval_every: int) -> tuple[str, str, float]:
    """The store with the sweep ``bench-<runs>x<steps>``: (uri, sweep id, seconds spent building; 0 if cached)."""
    from mlflow.tracking import MlflowClient

    sweep_id = f"bench-{runs}x{steps}"
    path = os.path.join(store_dir, "mlflow.db")
    uri = f"sqlite:///{os.path.abspath(path)}"
    if os.path.exists(path):
        client = MlflowClient(tracking_uri=uri)
        found = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            f"tags.`{names.TAG_SWEEP_ID}` = '{sweep_id}' and tags.complete = '1'", max_results=1,
        )
        if found:
            return uri, sweep_id, 0.0
    else:
        empty_store(path)
    start = time.perf_counter()
    info = log_sweep(uri, sweep_id, sweep_runs(runs, steps, seeds, eval_every), sweep_id=sweep_id,
                     artifact_location=os.path.join(store_dir, "artifacts"))
    MlflowClient(tracking_uri=uri).set_tag(info["parent_run_id"], "complete", "1")
    return uri, sweep_id, time.perf_counter() - start


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8 runs x 200 steps, 1 repeat (smoke test)")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--client-repeats", type=int, default=1, help="repeats of the (slow) client-API load")
    p.add_argument("--store-dir", default=None, help="where the store is built once and cached "
                                                     "(default: <tmp>/olmo-analysis-bench/<runs>x<steps>)")
    p.add_argument("--out", default=None, help="report folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.steps, args.seeds, args.eval_every, args.repeats = 8, 200, 2, 20, 1
    default_dir = os.path.join(tempfile.gettempdir(), "olmo-analysis-bench", f"{args.runs}x{args.steps}")
    store_dir = args.store_dir or default_dir
    os.makedirs(store_dir, exist_ok=True)
    out_dir = args.out or tempfile.mkdtemp(prefix="bench-analysis-")

    uri, sweep_id, build_s = build_store(store_dir, args.runs, args.steps, args.seeds, args.eval_every)
    results: dict[str, object] = {
        "runs": args.runs, "steps": args.steps, "repeats": args.repeats, "store": uri, "store_build_s": build_s,
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    phases = {}
    phases["load_sql"] = timed(lambda: load_sweep(uri, sweep_id=sweep_id, loader="sql"), args.repeats)
    phases["load_client"] = timed(lambda: load_sweep(uri, sweep_id=sweep_id, loader="client"), args.client_repeats)
    sweep = phases["load_sql"][2]
    rows = sum(len(v) for series in sweep.series.values() for _, v in series.values())
    results["metric_points_loaded"] = rows
    phases["analyse_eval"] = timed(lambda: analyse(sweep, baseline="pos=rope,init=normal"), args.repeats)
    phases["analyse_train_ema"] = timed(
        lambda: analyse(sweep, baseline="pos=rope,init=normal", metric=names.TRAIN_LOSS, ema=0.9), args.repeats)
    comp = phases["analyse_eval"][2]
    phases["report"] = timed(lambda: write_report(comp, out_dir), args.repeats)

    def end_to_end():
        s = load_sweep(uri, sweep_id=sweep_id, loader="sql")
        write_report(analyse(s, baseline="pos=rope,init=normal"), out_dir)

    phases["end_to_end"] = timed(end_to_end, args.repeats)

    built = f"built in {build_s:.0f} s" if build_s else "cached"
    print(f"sweep {sweep_id}: {args.runs} runs x {args.steps} steps, {rows:,} metric points loaded; "
          f"store {built} ({store_dir})")
    print(f"{'phase':<20} {'median s':>9}  all")
    for name, (median, times, _) in phases.items():
        print(f"{name:<20} {median:9.3f}  {' '.join(f'{t:.3f}' for t in times)}")
        results[name] = {"median_s": median, "times_s": times}
    print(f"report: {os.path.join(out_dir, 'report.html')}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
