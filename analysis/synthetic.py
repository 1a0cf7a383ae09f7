"""Synthetic sweeps with known curves, logged into a real MLflow store (for tests, benchmarks and demos).

Each run's loss is ``a + b * flops**-alpha + offset`` (a power law in compute, plus a per-seed offset), the train loss
adds Gaussian noise per step; so every answer of the analysis (loss at a budget, compute multiplier, main effects,
verdicts) is known exactly. Runs follow the tracking conventions: one sweep run per sweep, one run per job naming it;
axis, seed and sweep-id tags; ``train/flops`` and ``train/tokens`` at the step of every loss.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from analysis import names


@dataclass
class SynthRun:
    tags: dict[str, str]
    a: float = 2.0
    b: float = 40.0
    alpha: float = 0.1
    offset: float = 0.0
    noise: float = 0.0  # standard deviation of the per-step noise on train/loss
    steps: int = 200
    flops_per_step: float = 1e12
    tokens_per_step: int = 4096
    eval_every: int | None = 10
    seed: int = 0
    name: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    def loss(self, flops: np.ndarray | float) -> np.ndarray:
        return self.a + self.b * np.asarray(flops, dtype=float) ** -self.alpha + self.offset


def _metrics(run: SynthRun, rng: np.random.Generator, t0: int):
    from mlflow.entities import Metric

    steps = np.arange(1, run.steps + 1)
    flops = steps * run.flops_per_step
    clean = run.loss(flops)
    train = clean + (rng.normal(0.0, run.noise, len(steps)) if run.noise else 0.0)
    out = []
    for i, s in enumerate(steps.tolist()):
        ts = t0 + s
        out += [Metric(names.TRAIN_LOSS, float(train[i]), ts, s), Metric(names.TRAIN_FLOPS, float(flops[i]), ts, s),
                Metric(names.TRAIN_TOKENS, float(s * run.tokens_per_step), ts, s)]
        if run.eval_every and s % run.eval_every == 0:
            out += [Metric(names.EVAL_LOSS, float(clean[i]), ts, s),
                    Metric(names.EVAL_PERPLEXITY, float(np.exp(clean[i])), ts, s)]
    return out


def log_sweep(tracking_uri: str, experiment: str, runs: Sequence[SynthRun], sweep_id: str = "synthetic",
              artifact_location: str | None = None, parent: bool = True, batch: int = 1000) -> dict:
    """Log ``runs`` as one sweep; returns ``{"experiment_id", "parent_run_id", "run_ids"}``."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location)
    parent_id = None
    if parent:
        parent_id = client.create_run(exp_id, run_name=f"sweep-{sweep_id}",
                                      tags={names.TAG_SWEEP_ID: sweep_id}).info.run_id
    run_ids = []
    t0 = int(time.time() * 1000)
    for i, run in enumerate(runs):
        tags = {names.TAG_SWEEP_ID: sweep_id, names.TAG_CONFIG_HASH: f"{abs(hash((*run.tags.items(), run.seed))):x}",
                **run.tags}
        if parent_id:
            tags[names.TAG_SWEEP_RUN_ID] = parent_id
        name = run.name or "-".join([*run.tags.values(), f"s{run.seed}"])
        run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        metrics = _metrics(run, np.random.default_rng(1000 + i), t0)
        params = [Param("train.seed", str(run.seed)), Param("train.save_folder", f"/tmp/ckpt/{name}")]
        params += [Param(f"model.{k}", v) for k, v in run.tags.items()]  # implied by the axis tags
        params += [Param(k, str(v)) for k, v in run.params.items()]
        for j in range(0, len(metrics), batch):
            client.log_batch(run_id, metrics=metrics[j:j + batch], params=params if j == 0 else [])
        client.set_terminated(run_id)
        run_ids.append(run_id)
    if parent_id:
        client.set_tag(parent_id, "mlflow.note.content", f"synthetic sweep {sweep_id}")
        client.set_terminated(parent_id)
    return {"experiment_id": exp_id, "parent_run_id": parent_id, "run_ids": run_ids}


def empty_store(path: str, cache_dir: str | None = None) -> str:
    """An empty MLflow sqlite store at ``path``; returns its URI.

    Creating MLflow's tables takes ~10 s (schema migrations), so the first empty store is cached (per MLflow
    version, in ``cache_dir``, default the system temp folder) and copied after that.
    """
    import mlflow

    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "olmo-analysis-cache")
    os.makedirs(cache_dir, exist_ok=True)
    template = os.path.join(cache_dir, f"mlflow-{mlflow.__version__}-empty.db")
    if not os.path.exists(template):
        from mlflow.tracking import MlflowClient

        fd, tmp = tempfile.mkstemp(suffix=".db", dir=cache_dir)
        os.close(fd)
        os.remove(tmp)
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)  # creates the tables
        os.replace(tmp, template)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    shutil.copyfile(template, path)
    return f"sqlite:///{os.path.abspath(path)}"
