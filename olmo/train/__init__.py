"""Training: the loop, its callbacks, budgets, schedules, and one job end to end."""

from olmo.train.budget import Budget, training_budget
from olmo.train.callbacks import Callback, Checkpointer, NonFiniteGuard, NonFiniteLossError, SpeedMonitor
from olmo.train.experiment import build_job, run_experiment
from olmo.train.trainer import Trainer, TrainResult, TrainState

__all__ = [
    "Budget",
    "Callback",
    "Checkpointer",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "SpeedMonitor",
    "Trainer",
    "TrainResult",
    "TrainState",
    "build_job",
    "run_experiment",
    "training_budget",
]
