"""One training job end to end: processes, data, model, parallelism, trainer, resume, export."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from olmo.checkpoint import export_unsharded
from olmo.config import ExperimentConfig, ModelConfig
from olmo.distributed import init_distributed, parallelize
from olmo.distributed.env import DistEnv, barrier
from olmo.nn.model import OLMo
from olmo.train.budget import training_budget
from olmo.train.callbacks import Callback, Checkpointer, NonFiniteGuard, ProgressBar, SpeedMonitor
from olmo.train.optim import build_optimizer
from olmo.train.peak import measure_peak_flops
from olmo.train.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)


@dataclass
class Job:
    """The built pieces of one run, before training (useful for tests and tools)."""

    cfg: ExperimentConfig
    model_config: ModelConfig
    env: DistEnv
    trainer: Trainer
    data: object


def model_config_for_data(cfg: ExperimentConfig, vocab_size: int, eos_token_id: int) -> ModelConfig:
    """The data decides the vocabulary and the EOS id; the train sequence length must fit the model."""
    return cfg.model.replace(vocab_size=vocab_size, eos_token_id=eos_token_id, pad_token_id=eos_token_id)


def build_job(
    cfg: ExperimentConfig,
    callbacks: list[Callback] | None = None,
    env: DistEnv | None = None,
    model_hook: Callable[[OLMo], None] | None = None,
) -> Job:
    from olmo.data import TrainBatches, prepare_data

    env = env or init_distributed(cfg.distributed.backend)
    cfg.validate(env.world_size)
    # Rank 0 prepares (tokenizes, caches) first; the others then find the cache ready.
    if env.is_main:
        data = prepare_data(cfg.data)
    barrier()
    if not env.is_main:
        data = prepare_data(cfg.data)
    model_config = model_config_for_data(cfg, data.vocab_size, data.eos_token_id)

    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    model = OLMo(model_config, device=env.device)
    if model_hook is not None:
        model_hook(model)
    parallelize(model, cfg.distributed, cfg.train, env.world_size)
    torch.manual_seed(cfg.train.seed * 1000 + env.rank + 1)  # dropout streams differ per rank
    optimizer = build_optimizer(model, cfg.optim)
    budget = training_budget(model_config, cfg.train)

    t = cfg.train
    train_batches = TrainBatches(
        data.train, seq_len=t.seq_len, global_batch_size=t.global_batch_size, seed=t.seed,
        rank=env.rank, world_size=env.world_size,
    )
    validation = list(
        data.validation_batches(
            seq_len=t.seq_len, batch_size=t.global_batch_size, rank=env.rank, world_size=env.world_size,
            max_batches=t.eval_batches,
        )
    )
    peak = t.peak_flops_per_second or measure_peak_flops(
        torch.bfloat16 if t.precision == "bf16" else torch.float32, env.device.type
    )
    builtin: list[Callback] = [SpeedMonitor(peak), NonFiniteGuard()]
    if t.save_folder is not None:
        builtin.append(Checkpointer(t.checkpoint_interval))
    if t.progress_bar:
        builtin.append(ProgressBar())
    trainer = Trainer(
        model, optimizer, train_batches, validation, t, cfg.optim, cfg.scheduler, budget, env,
        builtin + list(callbacks or []),
    )
    return Job(cfg=cfg, model_config=model_config, env=env, trainer=trainer, data=data)


def run_experiment(
    cfg: ExperimentConfig,
    callbacks: list[Callback] | None = None,
    model_hook: Callable[[OLMo], None] | None = None,
) -> TrainResult:
    """Train one configured model; resume from save_folder's newest checkpoint when there is one."""
    job = build_job(cfg, callbacks, model_hook=model_hook)
    if cfg.train.save_folder and job.env.is_main:
        save_run_files(Path(cfg.train.save_folder), job)
    if job.trainer.maybe_resume():
        log.info("resumed from %s at step %d", job.trainer.last_checkpoint, job.trainer.state.step)
    result = job.trainer.fit()
    if result.status == "completed" and cfg.train.save_folder and cfg.train.export_final_model:
        final = export_unsharded(job.trainer.model, job.model_config, Path(cfg.train.save_folder) / "final",
                                 job.env.is_main)
        tokenizer = Path(cfg.train.save_folder) / TOKENIZER_FILE
        if job.env.is_main and tokenizer.is_file():
            shutil.copyfile(tokenizer, final / TOKENIZER_FILE)
    return result


MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_FILE = "tokenizer.json"


def save_run_files(folder: Path, job: Job) -> None:
    """Next to the checkpoints: the model config (with the data's vocabulary) and the tokenizer, so that any
    ``step<N>`` checkpoint can be loaded and decoded on its own (generate.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (MODEL_CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(job.model_config.asdict(), indent=2))
    os.replace(tmp, folder / MODEL_CONFIG_FILE)
    tokenizer = getattr(job.data, "tokenizer", None)
    if tokenizer is not None:
        tmp = folder / (TOKENIZER_FILE + ".tmp")
        tokenizer.save(str(tmp))
        os.replace(tmp, folder / TOKENIZER_FILE)
