"""The training loop: one optimizer step per global batch; everything optional is a Callback."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from olmo.checkpoint import CheckpointMeta, latest_checkpoint, load_checkpoint, save_checkpoint
from olmo.config.train import OptimConfig, SchedulerConfig, TrainConfig
from olmo.distributed.env import DistEnv, all_reduce_sum
from olmo.train.budget import Budget
from olmo.train.callbacks import Callback
from olmo.train.host_memory import keep_freed_host_memory
from olmo.train.loss import next_token_loss
from olmo.train.schedule import lr_at


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    tokens: int = 0  # over all ranks
    flops: int = 0  # model FLOPs (olmo.nn.flops convention) over all ranks


@dataclass
class TrainResult:
    status: str  # completed | preempted
    state: TrainState
    history: list[dict[str, float]] = field(default_factory=list)
    eval_history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final_eval_loss(self) -> float | None:
        return self.eval_history[-1]["eval/loss"] if self.eval_history else None


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_batches: Any,  # olmo.data.TrainBatches: .batch(step) -> Batch
        validation_batches: list[Any],  # this rank's fixed validation batches
        train_cfg: TrainConfig,
        optim_cfg: OptimConfig,
        scheduler_cfg: SchedulerConfig,
        budget: Budget,
        env: DistEnv,
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.train_batches = train_batches
        self.validation_batches = validation_batches
        self.cfg = train_cfg
        self.optim_cfg = optim_cfg
        self.scheduler_cfg = scheduler_cfg
        self.budget = budget
        self.env = env
        self.callbacks = list(callbacks or [])
        self.state = TrainState()
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_step: int | None = None
        self._stop_reason: str | None = None
        self._local_batch = train_cfg.global_batch_size // env.world_size
        self._micro = train_cfg.micro_batch_size or self._local_batch

    # ----- public control --------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.precision == "bf16":
            return torch.autocast(self.env.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ----- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        assert self.cfg.save_folder is not None, "train.save_folder is needed to save checkpoints"
        meta = CheckpointMeta(
            step=self.state.step,
            tokens=self.state.tokens,
            flops=self.state.flops,
            world_size=self.env.world_size,
            global_batch_size=self.cfg.global_batch_size,
            callbacks={cb.name: s for cb in self.callbacks if (s := cb.state_dict()) is not None},
        )
        self.last_checkpoint = save_checkpoint(
            self.cfg.save_folder, meta, self.model, self.optimizer, self.env, self.cfg.keep_last
        )
        self.last_checkpoint_step = self.state.step
        return self.last_checkpoint

    def maybe_resume(self) -> bool:
        """Resume from the newest complete checkpoint in save_folder, if any."""
        if self.cfg.save_folder is None:
            return False
        path = latest_checkpoint(self.cfg.save_folder)
        if path is None:
            return False
        meta = load_checkpoint(path, self.model, self.optimizer, self.env)
        if meta.global_batch_size != self.cfg.global_batch_size:
            raise ValueError(
                f"train.global_batch_size={self.cfg.global_batch_size} differs from the checkpoint's "
                f"{meta.global_batch_size} ({path}); resuming would change the data order"
            )
        self.state = TrainState(step=meta.step, tokens=meta.tokens, flops=meta.flops)
        for cb in self.callbacks:
            if cb.name in meta.callbacks:
                cb.load_state_dict(meta.callbacks[cb.name])
        self.last_checkpoint, self.last_checkpoint_step = path, meta.step
        return True

    # ----- the loop ------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        result = TrainResult(status="running", state=self.state)
        if self.env.device.type == "cpu":  # large activations stay mapped between steps (olmo.train.host_memory)
            keep_freed_host_memory()
        self.model.train()
        for cb in self.callbacks:
            cb.on_train_start(self)
        status = "failed"
        try:
            while self.state.step < self.budget.steps and self._stop_reason is None:
                for cb in self.callbacks:
                    cb.on_step_start(self)
                metrics = self.train_step(self.train_batches.batch(self.state.step))
                for cb in self.callbacks:
                    cb.on_step_end(self, metrics)
                result.history.append(metrics)
                step = self.state.step
                due = (self.cfg.eval_interval and step % self.cfg.eval_interval == 0) or step == self.budget.steps
                # A preempted run resumes after this step: an evaluation due here runs now or never.
                if due and self._stop_reason in (None, "preempted"):
                    result.eval_history.append(self.evaluate())
            status = self._stop_reason or "completed"
        finally:
            result.status = status
            for cb in self.callbacks:
                cb.on_train_end(self, status)
        result.state = self.state
        return result

    def train_step(self, batch: Any) -> dict[str, float]:
        step = self.state.step
        lr = lr_at(step, self.optim_cfg.lr, self.budget.steps, self.scheduler_cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # FSDP averages gradients over ranks, so each rank normalises by its own token count.
        local_tokens = self._local_batch * (self.cfg.seq_len - 1)
        sums = torch.zeros(2, dtype=torch.float64)  # summed CE, summed z-loss (this rank)
        for start in range(0, self._local_batch, self._micro):
            input_ids = batch.input_ids[start : start + self._micro].to(self.env.device)
            doc_lens = None
            if self.cfg.document_masking:
                doc_lens = batch.doc_lens[start : start + self._micro].to(self.env.device)
            with self.autocast():
                logits = self.model(input_ids, doc_lens=doc_lens).logits
            ce, z = next_token_loss(logits, input_ids, self.cfg.z_loss_multiplier)
            loss = ce if z is None else ce + z
            (loss / local_tokens).backward()
            sums[0] += ce.detach().double().cpu()
            if z is not None:
                sums[1] += z.detach().double().cpu()
        global_tokens = self.cfg.global_batch_size * (self.cfg.seq_len - 1)
        sums = all_reduce_sum(sums.to(self.env.device)).cpu() / global_tokens
        metrics = {"train/loss": float(sums[0]), "train/lr": lr}
        if self.cfg.z_loss_multiplier:
            metrics["train/z_loss"] = float(sums[1])
        for cb in self.callbacks:
            cb.before_optimizer_step(self, metrics)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm, foreach=True)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens += self.budget.tokens_per_step
        self.state.flops += self.budget.flops_per_step
        metrics["train/grad_norm"] = float(grad_norm)
        metrics["train/tokens"] = float(self.state.tokens)
        metrics["train/flops"] = float(self.state.flops)
        metrics["step"] = self.state.step
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64)  # summed CE, predicted tokens
        for batch in self.validation_batches:
            input_ids = batch.input_ids.to(self.env.device)
            doc_lens = batch.doc_lens.to(self.env.device) if self.cfg.document_masking else None
            with self.autocast():
                logits = self.model(input_ids, doc_lens=doc_lens).logits
            ce, _ = next_token_loss(logits, input_ids)
            sums += torch.tensor([float(ce), input_ids.numel() - input_ids.shape[0]], dtype=torch.float64)
        self.model.train()
        sums = all_reduce_sum(sums.to(self.env.device)).cpu()
        loss = float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
        metrics = {
            "eval/loss": loss,
            "eval/perplexity": float(torch.exp(torch.tensor(loss))),
            "train/tokens": float(self.state.tokens),
            "train/flops": float(self.state.flops),
            "step": self.state.step,
        }
        for cb in self.callbacks:
            cb.on_eval_end(self, metrics)
        return metrics
