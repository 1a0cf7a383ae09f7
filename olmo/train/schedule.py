"""Learning-rate schedules as pure functions of the step (so a resumed run needs no scheduler state)."""

from __future__ import annotations

import math
from collections.abc import Callable

from olmo.config.train import SchedulerConfig
from olmo.registry import Registry

# (step, total_steps, warmup_steps, alpha_f) -> multiplier of the peak LR after warmup
SCHEDULES: Registry[Callable[[int, int, int, float], float]] = Registry("scheduler.name")


@SCHEDULES.register("constant")
def _constant(step: int, total: int, warmup: int, alpha_f: float) -> float:
    return 1.0


@SCHEDULES.register("linear")
def _linear(step: int, total: int, warmup: int, alpha_f: float) -> float:
    progress = (step - warmup) / max(1, total - warmup)
    return 1.0 - (1.0 - alpha_f) * min(1.0, progress)


@SCHEDULES.register("cosine")
def _cosine(step: int, total: int, warmup: int, alpha_f: float) -> float:
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return alpha_f + (1.0 - alpha_f) * 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("inverse_sqrt")
def _inverse_sqrt(step: int, total: int, warmup: int, alpha_f: float) -> float:
    return math.sqrt(max(1, warmup) / max(step, max(1, warmup)))


def lr_at(step: int, peak_lr: float, total_steps: int, cfg: SchedulerConfig) -> float:
    """LR for the optimizer step with index ``step`` (0-based): linear warmup, then the schedule."""
    if step < cfg.warmup_steps:
        return peak_lr * (step + 1) / cfg.warmup_steps
    return peak_lr * SCHEDULES.get(cfg.name)(step, total_steps, cfg.warmup_steps, cfg.alpha_f)
