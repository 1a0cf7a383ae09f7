"""olmo.tracking against a real sqlite MLflow store: params, tags, per-step FLOPs, skip, resume, failure, retries."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from mlflow import MlflowClient
from train_helpers import StopAt

from olmo.config import ExperimentConfig
from olmo.tracking import (
    JobContext,
    MetricWriter,
    TrackingConfig,
    axis_tags,
    checkpoint_run_id,
    config_hash,
    prepare_store,
    run_tracked,
    sqlite_uri,
)
from olmo.train.callbacks import NonFiniteLossError


def tiny(cache: str, **train) -> ExperimentConfig:
    d = {
        "model": dict(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, max_sequence_length=64, positional="alibi",
                      attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0),
        "data": dict(cache_dir=cache, tokenizer=dict(vocab_size=512)),
        "scheduler": dict(warmup_steps=1),
        "train": dict(global_batch_size=4, seq_len=32, max_steps=6, eval_interval=3, eval_batches=1,
                      peak_flops_per_second=1e11, **train),
    }
    return ExperimentConfig.from_dict(d)


def context(tmp_path, **kw) -> JobContext:
    kw.setdefault("tracking", TrackingConfig(system_metrics=False))
    return JobContext(results_dir=str(tmp_path / "results"), **kw)


def store(tmp_path) -> MlflowClient:
    return MlflowClient(sqlite_uri(tmp_path / "results" / "mlflow.db"))


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_config_hash_ignores_where_things_are_written(data_cache):
    cfg = tiny(data_cache)
    moved = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, cache_dir="/elsewhere"),
        train=dataclasses.replace(cfg.train, save_folder="/x", checkpoint_interval=2, peak_flops_per_second=1.0),
    )
    assert config_hash(moved) == config_hash(cfg)
    other = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=cfg.optim.lr * 2))
    assert config_hash(other) != config_hash(cfg)
    assert len(config_hash(cfg)) == 16


def test_axis_tags_use_the_command_line_names(data_cache):
    model = tiny(data_cache).model
    assert axis_tags(model) == {"attention": "gqa", "pos": "alibi", "norm": "layernorm", "activation": "swiglu",
                                "init": "normal", "block": "sequential", "kernel": "sdpa"}
    assert axis_tags(model.replace(n_kv_heads=1, init_fn="full_megatron"))["attention"] == "mqa"
    assert axis_tags(model.replace(n_kv_heads=None))["attention"] == "mha"
    assert axis_tags(model.replace(init_fn="full_megatron", layer_norm_type="rms"))["init"] == "megatron"


def test_tracked_job_logs_params_tags_flops_artifacts_and_is_skipped_when_done(tmp_path, data_cache, one_torch_thread):
    cfg = tiny(data_cache)
    ctx = context(tmp_path, tags={"launcher": "test"}, resolved_config="model: {}\n")
    out = run_tracked(cfg, ctx)
    assert out.status == "finished" and out.steps == 6
    c = store(tmp_path)
    run = c.get_run(out.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["config_hash"] == config_hash(cfg) == out.config_hash
    assert (tags["attention"], tags["pos"], tags["launcher"], tags["world_size"]) == ("gqa", "alibi", "test", "1")
    assert tags["git_commit"] and tags["seed"] == "0"
    assert tags["cpu_linear_kernel"] in ("onednn", "aten")
    params = run.data.params
    assert params["model.n_kv_heads"] == "2" and params["optim.lr"] == str(cfg.optim.lr)
    assert params["train.save_folder"] == out.save_folder and int(params["derived.budget_steps"]) == 6
    # train/flops and train/tokens at exactly the steps of every loss; eval at its own steps
    assert steps(c, out.run_id, "train/loss") == list(range(1, 7))
    assert steps(c, out.run_id, "train/flops") == steps(c, out.run_id, "train/tokens") == list(range(1, 7))
    flops = sorted((m.step, m.value) for m in c.get_metric_history(out.run_id, "train/flops"))
    assert flops[-1][1] == 6 * flops[0][1] > 0
    assert steps(c, out.run_id, "eval/loss") == [3, 6]
    artifacts = {a.path for a in c.list_artifacts(out.run_id)}
    assert {"config.yaml", "model"} <= artifacts
    assert {"model/config.json", "model/model.safetensors"} <= {a.path for a in c.list_artifacts(out.run_id, "model")}
    assert checkpoint_run_id(out.save_folder) == out.run_id

    again = run_tracked(cfg, ctx)
    assert (again.status, again.run_id) == ("skipped", out.run_id)
    forced = run_tracked(cfg, dataclasses.replace(ctx, force=True))
    assert forced.status == "finished" and forced.run_id != out.run_id
    assert c.get_run(forced.run_id).info.status == "FINISHED"


def test_a_stopped_job_resumes_the_same_run_without_duplicate_steps(tmp_path, data_cache, one_torch_thread):
    cfg = tiny(data_cache)
    ctx = context(tmp_path)
    first = run_tracked(cfg, ctx, callbacks=[StopAt(4, status="preempted")])
    assert first.status == "preempted" and first.steps == 4
    c = store(tmp_path)
    assert c.get_run(first.run_id).info.status == "KILLED"
    second = run_tracked(cfg, ctx)
    assert second.status == "finished" and second.run_id == first.run_id
    run = c.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert steps(c, first.run_id, "train/loss") == list(range(1, 7))  # each step once
    assert steps(c, first.run_id, "train/flops") == list(range(1, 7))
    assert steps(c, first.run_id, "eval/loss") == [3, 6]
    runs = c.search_runs([run.info.experiment_id])
    assert len(runs) == 1


def test_a_job_preempted_before_its_first_checkpoint_continues_its_run_in_the_same_sweep(tmp_path, data_cache,
                                                                                          one_torch_thread):
    cfg = tiny(data_cache, checkpoint_interval=100)
    ctx = context(tmp_path, sweep_id="s1")
    first = run_tracked(cfg, ctx, callbacks=[StopAt(4, status="preempted", checkpoint=False)])
    assert first.status == "preempted"
    c = store(tmp_path)
    assert c.get_run(first.run_id).info.status == "KILLED"
    assert not list(Path(first.save_folder).glob("step*"))  # nothing to resume from: training restarts at 0
    losses = {m.step: m.value for m in c.get_metric_history(first.run_id, "train/loss")}
    second = run_tracked(cfg, ctx)  # the requeued job: same sweep, same config
    assert second.status == "finished" and second.run_id == first.run_id  # one run per job, not two
    assert steps(c, first.run_id, "train/loss") == list(range(1, 7))  # each step once
    again = {m.step: m.value for m in c.get_metric_history(first.run_id, "train/loss")}
    assert all(again[k] == v for k, v in losses.items())
    assert len(c.search_runs([c.get_run(first.run_id).info.experiment_id])) == 1
    # another sweep trains the config in a run of its own
    third = run_tracked(cfg, context(tmp_path, sweep_id="s2", force=True))
    assert third.run_id != first.run_id


def test_a_failing_job_is_recorded_failed_with_its_error(tmp_path, data_cache, one_torch_thread):
    cfg = tiny(data_cache)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=1e9),
                              train=dataclasses.replace(cfg.train, grad_clip=None))
    out = run_tracked(cfg, context(tmp_path, raise_on_failure=False))
    assert out.status == "failed" and "NonFiniteLossError" in out.error
    c = store(tmp_path)
    run = c.get_run(out.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("NonFiniteLossError: non-finite loss")
    assert "error.txt" in {a.path for a in c.list_artifacts(out.run_id)}
    with pytest.raises(NonFiniteLossError):  # a single run raises (after recording)
        run_tracked(cfg, context(tmp_path, raise_on_failure=True))
    failed = c.search_runs([run.info.experiment_id], filter_string="attributes.status = 'FAILED'")
    assert len(failed) == 2


class Flaky:
    """A real client whose first ``failures`` log_batch calls raise, as a locked sqlite store does."""

    def __init__(self, client: MlflowClient, failures: int) -> None:
        self.client, self.failures, self.calls = client, failures, 0

    def log_batch(self, run_id, metrics=(), synchronous=None, **kw):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return self.client.log_batch(run_id, metrics=metrics, synchronous=synchronous, **kw)


def test_metric_writer_retries_a_busy_store_and_loses_nothing(tmp_path):
    uri = sqlite_uri(tmp_path / "mlflow.db")
    experiment = prepare_store(uri, "writer")
    client = MlflowClient(uri)
    run_id = client.create_run(experiment).info.run_id
    flaky = Flaky(client, failures=3)
    writer = MetricWriter(flaky, run_id, max_backoff_seconds=0.05)
    for step in range(1, 1501):  # more than one batch (1000 metrics per log_batch)
        writer.log({"train/loss": 1.0 / step, "train/flops": float(step)}, step)
    assert writer.close(timeout=60)
    assert writer.errors == [] and writer.metrics_written == 3000 and flaky.calls >= 4
    assert steps(client, run_id, "train/loss") == list(range(1, 1501))
    assert steps(client, run_id, "train/flops") == list(range(1, 1501))
