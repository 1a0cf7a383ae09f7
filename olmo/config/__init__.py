"""The schema: dataclasses for every configurable part, validated with one-line errors."""

from olmo.config.data import DataConfig, TokenizerConfig
from olmo.config.experiment import ExperimentConfig
from olmo.config.model import ModelConfig
from olmo.config.train import DistributedConfig, OptimConfig, SchedulerConfig, TrainConfig

__all__ = [
    "DataConfig",
    "DistributedConfig",
    "ExperimentConfig",
    "ModelConfig",
    "OptimConfig",
    "SchedulerConfig",
    "TokenizerConfig",
    "TrainConfig",
]
