"""Checkpoints that resume bit-for-bit, and unsharded exports."""

from olmo.checkpoint.checkpointer import (
    CheckpointMeta,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from olmo.checkpoint.export import export_unsharded, load_unsharded

__all__ = [
    "CheckpointMeta",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "export_unsharded",
    "load_unsharded",
]
