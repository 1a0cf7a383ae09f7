"""Pruning of hyperparameter-search trials at FLOP milestones (an Optuna trial, or anything with its two methods).

Trials report their eval loss at *FLOP milestones*, not at steps, so variants with a different cost per step
(wider, deeper, more heads) are compared after the same compute. The milestones are a log-spaced grid shared
by every trial of a search and anchored at its FLOP budget ``F``::

    milestone i (i = 1 .. N, N = per_decade * decades + 1) is at  F * 10 ** ((i - N) / per_decade) FLOPs

so milestone 1 is at ``F / 10**decades`` and milestone N at the budget; the milestone number is the integer
``step`` of ``trial.report``. Evaluations happen every ``train.eval_interval`` steps, which rarely falls on a
milestone: the value reported for a milestone is the eval loss interpolated (linearly in log FLOPs) between the
evaluations just before and just after it, so no variant is credited with compute it did not spend.

Rank 0 holds the trial and decides; with several ranks the decision is broadcast, and every rank stops at the
same step. This module needs no Optuna: the trial is duck-typed (``report(value, step)``, ``should_prune()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from olmo.distributed.env import broadcast_object
from olmo.errors import bad_value
from olmo.train.callbacks import Callback

if TYPE_CHECKING:
    from olmo.train.trainer import Trainer

PRUNED = "pruned"  # the trainer's stop reason (TrainResult.status) of a pruned trial


class ReportingTrial(Protocol):
    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


@dataclass(frozen=True)
class FlopMilestones:
    """The log-spaced grid of FLOP milestones shared by all trials of a search (see the module docstring)."""

    budget_flops: float
    per_decade: int = 4
    decades: int = 2

    def __post_init__(self) -> None:
        if not (self.budget_flops > 0 and math.isfinite(self.budget_flops)):
            raise bad_value("milestones budget_flops", self.budget_flops, "a positive number of FLOPs")
        if self.per_decade < 1:
            raise bad_value("milestones.per_decade", self.per_decade, "a positive integer")
        if self.decades < 1:
            raise bad_value("milestones.decades", self.decades, "a positive integer")

    @property
    def count(self) -> int:
        """N: the number of the milestone at the budget (milestones past the budget continue the grid)."""
        return self.per_decade * self.decades + 1

    def flops(self, index: int) -> float:
        return self.budget_flops * 10.0 ** ((index - self.count) / self.per_decade)

    def index_at(self, flops: float) -> int:
        """The number of the last milestone at or below ``flops`` (< 1: below the first milestone)."""
        if flops <= 0:
            return 0
        i = self.count + math.floor(self.per_decade * math.log10(flops / self.budget_flops) + 1e-9)
        return i


class OptunaPruning(Callback):
    """Reports ``metric`` at every FLOP milestone crossed by an evaluation; stops the run when the trial says so.

    ``trial`` is the Optuna trial on rank 0 and None on the other ranks. After training, ``reports`` holds
    ``{milestone: value}``, ``last_eval`` the metrics of the last evaluation and ``pruned_at`` the milestone
    (number, FLOPs) at which the trial was pruned, if it was.
    """

    name = "optuna_pruning"

    def __init__(self, trial: ReportingTrial | None, milestones: FlopMilestones, metric: str = "eval/loss") -> None:
        self.trial = trial
        self.milestones = milestones
        self.metric = metric
        self.reports: dict[int, float] = {}
        self.last_eval: dict[str, float] = {}
        self.pruned_at: tuple[int, float] | None = None
        self._previous: tuple[float, float] | None = None  # (flops, value) of the previous evaluation

    def on_eval_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.last_eval = dict(metrics)
        value = float(metrics[self.metric])
        flops = float(metrics["train/flops"])
        t = trainer.cfg
        if t.max_flops is not None and trainer.state.step >= trainer.budget.steps:
            flops = max(flops, float(t.max_flops))  # a FLOP budget's last step ends at (just under) the budget
        crossed = self._crossed(flops, value)
        final = trainer.state.step >= trainer.budget.steps
        prune = False
        if self.trial is not None and crossed:
            for index, reported in crossed:
                self.trial.report(reported, index)
            # The last evaluation of a run is its result, not a reason to stop it.
            prune = not final and bool(self.trial.should_prune())
        for index, reported in crossed:
            self.reports[index] = reported
        self._previous = (flops, value)
        if trainer.env.distributed:
            prune = bool(broadcast_object(prune))
        if prune:
            index = max(i for i, _ in crossed)
            self.pruned_at = (index, self.milestones.flops(index))
            trainer.request_stop(PRUNED)

    def _crossed(self, flops: float, value: float) -> list[tuple[int, float]]:
        """The milestones passed since the previous evaluation, each with its interpolated value."""
        last = self.milestones.index_at(flops)
        first = self.milestones.index_at(self._previous[0]) + 1 if self._previous is not None else last
        out = []
        for index in range(max(first, 1), last + 1):
            out.append((index, self._interpolate(self.milestones.flops(index), flops, value)))
        return out

    def _interpolate(self, at: float, flops: float, value: float) -> float:
        if self._previous is None or not math.isfinite(value):
            return value
        f0, v0 = self._previous
        if not (math.isfinite(v0) and 0 < f0 < flops and f0 <= at <= flops):
            return value
        w = (math.log(at) - math.log(f0)) / (math.log(flops) - math.log(f0))
        return v0 + w * (value - v0)

    def state_dict(self) -> dict[str, Any] | None:
        return {"reports": {str(k): v for k, v in self.reports.items()}, "previous": self._previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reports = {int(k): float(v) for k, v in (state.get("reports") or {}).items()}
        previous = state.get("previous")
        self._previous = tuple(previous) if previous else None  # type: ignore[assignment]
