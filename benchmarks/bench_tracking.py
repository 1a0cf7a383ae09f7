"""What MLflow tracking costs a training step: olmo.tracking.run_tracked with and without tracking, interleaved.

Each repeat trains the same config twice in this process, once with tracking off and once with the MLflow
callback writing to a throw-away sqlite store (system metrics on), alternating which goes first. Per optimizer
step it records:
  - hook: the time MLflowCallback.on_step_end takes inside the loop (queueing the step's metrics for the
    background writer thread): what the training loop waits for;
  - period: wall time from one step's start to the next (everything: batch, forward, backward, AdamW, every
    callback, and any slowdown from the writer thread competing for the GIL and the cores);
  - cpu: process CPU time per step (all threads: the writer's work included);
  - writer: CPU time of the background writer thread (MLflow's log_batch) per step.
Steps followed by an evaluation and the first 10 steps are left out. Overhead = tracked / untracked - 1 of
the medians.

    python benchmarks/bench_tracking.py                # both configs, 3 repeats, ~5 min on 2 cores
    python benchmarks/bench_tracking.py --quick        # smoke test: 1 repeat, 30 steps
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from olmo.config import ExperimentConfig  # noqa: E402
from olmo.tracking import JobContext, MLflowCallback, TrackingConfig, run_tracked  # noqa: E402
from olmo.train import Callback  # noqa: E402

SKIP_FIRST = 10

CONFIGS = {
    # run.py's default job: model=tiny, train=quick (16 x 128 tokens per step, 4096-token BPE)
    "tiny/quick": dict(d_model=128, n_heads=4, n_layers=4, seq=128, batch=16, vocab=4096),
    # a step ~10x shorter: tracking's share of the step is 10x larger
    "tiny/short-steps": dict(d_model=128, n_heads=4, n_layers=4, seq=64, batch=4, vocab=512),
}


class Clock(Callback):
    name = "bench_clock"

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.eval_steps: set[int] = set()

    def on_step_start(self, trainer) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def on_eval_end(self, trainer, metrics) -> None:
        self.eval_steps.add(trainer.state.step)

    def per_step(self) -> tuple[list[float], list[float]]:
        """(wall, cpu) of steps 1..n-1 that no evaluation followed, after the warm-up."""
        wall, cpu = [], []
        for i in range(SKIP_FIRST, len(self.wall) - 1):
            if i + 1 in self.eval_steps:  # the period of step i+1 holds its evaluation
                continue
            wall.append(self.wall[i + 1] - self.wall[i])
            cpu.append(self.cpu[i + 1] - self.cpu[i])
        return wall, cpu


def experiment(spec: dict, steps: int, cache: str) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "model": dict(d_model=spec["d_model"], n_heads=spec["n_heads"], n_layers=spec["n_layers"],
                      max_sequence_length=spec["seq"], positional="rope", include_bias=False,
                      attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0),
        "data": dict(cache_dir=cache, tokenizer=dict(vocab_size=spec["vocab"])),
        "scheduler": dict(warmup_steps=5),
        "train": dict(global_batch_size=spec["batch"], seq_len=spec["seq"], max_steps=steps, eval_interval=50,
                      eval_batches=2, peak_flops_per_second=1e11, export_final_model=False),
    })


def one_run(cfg: ExperimentConfig, tracked: bool, results: str) -> dict:
    clock = Clock()
    hooks: list[float] = []
    writer: list[float] = []

    class Grab(Callback):  # keep the MLflow callback's own timings
        name = "bench_grab"

        def on_train_end(self, trainer, status):
            for cb in trainer.callbacks:
                if isinstance(cb, MLflowCallback) and cb.run is not None:
                    hooks.extend(cb.hook_seconds[SKIP_FIRST:])
                    cb.run.flush()
                    writer.append(cb.run.writer.cpu_seconds / trainer.state.step)

    tracking = TrackingConfig(enabled=tracked, experiment="bench-tracking", system_metrics=True)
    out = run_tracked(cfg, JobContext(tracking=tracking, results_dir=results, force=True),
                      callbacks=[clock, Grab()])
    assert out.status == "finished", out
    wall, cpu = clock.per_step()
    return {"wall": wall, "cpu": cpu, "hook": hooks, "writer": writer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", default=None, help="write every timing here")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps = 1, 30
    torch.set_num_threads(args.threads)
    cache = os.environ.get("OLMO_SWEEPS_CACHE") or str(Path(tempfile.gettempdir()) / "olmo-bench-cache")
    rows, raw = [], {}
    with tempfile.TemporaryDirectory(prefix="olmo-bench-tracking-") as results:
        for name, spec in CONFIGS.items():
            cfg = experiment(spec, args.steps, cache)
            acc = {t: {"wall": [], "cpu": [], "hook": [], "writer": []} for t in (False, True)}
            one_run(cfg, False, results)  # warm-up: data cache, allocator, peak
            for r in range(args.repeats):
                for tracked in ((False, True) if r % 2 == 0 else (True, False)):
                    got = one_run(cfg, tracked, results)
                    for k in acc[tracked]:
                        acc[tracked][k].extend(got[k])
            med = {t: {k: statistics.median(v) if v else 0.0 for k, v in acc[t].items()} for t in acc}
            rows.append((name, med))
            raw[name] = acc
            print(f"{name}: untracked {med[False]['wall'] * 1e3:.2f} ms/step wall, {med[False]['cpu'] * 1e3:.2f} "
                  f"ms cpu | tracked {med[True]['wall'] * 1e3:.2f} ms wall, {med[True]['cpu'] * 1e3:.2f} ms cpu | "
                  f"hook {med[True]['hook'] * 1e6:.1f} us = {med[True]['hook'] / med[False]['wall']:.3%} of a step | "
                  f"writer thread {med[True]['writer'] * 1e3:.2f} ms cpu/step",
                  flush=True)
    print()
    print(markdown(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps({k: {str(t): v for t, v in d.items()} for k, d in raw.items()}))


def markdown(rows, args) -> str:
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}, {args.threads} torch thread(s); commit "
        f"{_commit()}. {args.repeats} interleaved repeats x {args.steps} steps per case.",
        "",
        "| config | untracked ms/step (wall / cpu) | tracked ms/step (wall / cpu) | wall overhead | cpu overhead "
        "| in-loop hook | hook / step | writer thread CPU / step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in rows:
        u, t = m[False], m[True]
        lines.append(
            f"| {name} | {u['wall'] * 1e3:.2f} / {u['cpu'] * 1e3:.2f} | {t['wall'] * 1e3:.2f} / {t['cpu'] * 1e3:.2f} "
            f"| {t['wall'] / u['wall'] - 1:+.2%} | {t['cpu'] / u['cpu'] - 1:+.2%} | {t['hook'] * 1e6:.0f} us "
            f"| {t['hook'] / u['wall']:.3%} | {t['writer'] * 1e3:.2f} ms ({t['writer'] / u['cpu']:.2%}) |"
        )
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    main()
