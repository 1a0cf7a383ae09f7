"""Processes and parallelism, applied from outside the model (torchtitan style)."""

from olmo.distributed.env import DistEnv, init_distributed, shutdown_distributed
from olmo.distributed.parallelize import apply_activation_checkpointing, apply_fsdp, parallelize

__all__ = [
    "DistEnv",
    "init_distributed",
    "shutdown_distributed",
    "apply_activation_checkpointing",
    "apply_fsdp",
    "parallelize",
]
