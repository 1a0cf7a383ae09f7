"""Schema of the training run: optimizer, LR schedule, budget, precision, checkpoints, distribution."""

from __future__ import annotations

from dataclasses import dataclass

from olmo.errors import OLMoConfigurationError, bad_value

SCHEDULERS = ("constant", "linear", "cosine", "inverse_sqrt")
PRECISIONS = ("fp32", "bf16")
FSDP_WRAP_STRATEGIES = (
    "none", "by_block", "by_block_group", "by_block_and_size", "size_based",
    "one_in_two", "one_in_three", "one_in_four", "one_in_five",
)
ACTIVATION_CHECKPOINTING = (
    "none", "whole_layer", "one_in_two", "one_in_three", "one_in_four", "one_in_eight",
    "two_in_three", "three_in_four", "fine_grained",
)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norm_and_bias: bool = False  # apply weight decay to norm weights and biases too
    decay_embeddings: bool = False  # apply weight decay to wte/wpe too

    def validate(self) -> None:
        if self.lr <= 0:
            raise bad_value("optim.lr", self.lr, "a positive number")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise bad_value(f"optim.{name}", getattr(self, name), "a number in [0, 1)")
        if self.weight_decay < 0:
            raise bad_value("optim.weight_decay", self.weight_decay, "a number >= 0")


@dataclass
class SchedulerConfig:
    name: str = "cosine"  # constant | linear | cosine | inverse_sqrt
    warmup_steps: int = 0
    # Final LR as a fraction of the peak, for linear and cosine decay.
    alpha_f: float = 0.1

    def validate(self) -> None:
        if self.name not in SCHEDULERS:
            raise bad_value("scheduler.name", self.name, SCHEDULERS)
        if self.warmup_steps < 0:
            raise bad_value("scheduler.warmup_steps", self.warmup_steps, "an integer >= 0")
        if not 0.0 <= self.alpha_f <= 1.0:
            raise bad_value("scheduler.alpha_f", self.alpha_f, "a fraction in [0, 1]")


@dataclass
class TrainConfig:
    # Batch: sequences per optimizer step over all ranks; micro batches per rank give accumulation.
    global_batch_size: int = 16
    micro_batch_size: int | None = None  # per rank; None = the whole local batch at once
    seq_len: int = 256
    # Budget: exactly one of these. A FLOP budget gives variants of different cost equal compute.
    max_steps: int | None = None
    max_tokens: int | None = None
    max_flops: float | None = None
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    grad_clip: float | None = 1.0
    z_loss_multiplier: float | None = None
    document_masking: bool = False  # attention never crosses the EOS-separated documents of a sequence
    eval_interval: int | None = 50  # steps; None = only at the end
    eval_batches: int | None = 10  # validation batches per evaluation; None = the whole split
    seed: int = 0
    # MFU denominator per device in FLOP/s; None = measured once on this machine (matmul peak).
    peak_flops_per_second: float | None = None
    compile: bool = False
    progress_bar: bool = False
    # Checkpoints
    save_folder: str | None = None  # a run started in a folder holding checkpoints resumes from the newest
    checkpoint_interval: int | None = None  # steps; None = only on preemption and at the end
    keep_last: int = 2
    export_final_model: bool = True  # safetensors + config JSON in save_folder/final

    def validate(self) -> None:
        budgets = [b for b in ("max_steps", "max_tokens", "max_flops") if getattr(self, b) is not None]
        if len(budgets) != 1:
            raise OLMoConfigurationError(
                f"train budget: set exactly one of max_steps, max_tokens, max_flops (got {budgets or 'none'})"
            )
        budget = budgets[0]
        if getattr(self, budget) <= 0:
            raise bad_value(f"train.{budget}", getattr(self, budget), "a positive number")
        for name in ("global_batch_size", "seq_len", "keep_last"):
            if getattr(self, name) < 1:
                raise bad_value(f"train.{name}", getattr(self, name), "a positive integer")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise bad_value("train.micro_batch_size", self.micro_batch_size, "None or a positive integer")
        if self.precision not in PRECISIONS:
            raise bad_value("train.precision", self.precision, PRECISIONS)
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise bad_value("train.grad_clip", self.grad_clip, "None or a positive number")
        for name in ("eval_interval", "checkpoint_interval", "eval_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise bad_value(f"train.{name}", value, "None or a positive integer")


@dataclass
class DistributedConfig:
    fsdp_wrap: str = "by_block"  # used only when world size > 1
    fsdp_min_params: int = 1_000_000  # threshold of size_based / by_block_and_size
    fsdp_mixed_precision: bool = True  # with precision=bf16: bf16 params in compute, fp32 reductions
    activation_checkpointing: str = "none"
    backend: str | None = None  # None = nccl on CUDA, gloo on CPU

    def validate(self) -> None:
        if self.fsdp_wrap not in FSDP_WRAP_STRATEGIES:
            raise bad_value("distributed.fsdp_wrap", self.fsdp_wrap, FSDP_WRAP_STRATEGIES)
        if self.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
            raise bad_value(
                "distributed.activation_checkpointing", self.activation_checkpointing, ACTIVATION_CHECKPOINTING
            )
        if self.backend not in (None, "gloo", "nccl"):
            raise bad_value("distributed.backend", self.backend, ("None", "gloo", "nccl"))
