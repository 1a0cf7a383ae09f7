"""MLflowCallback: the trainer's metrics into MLflow at each optimizer step, from rank 0 only."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from olmo.train.callbacks import Callback

if TYPE_CHECKING:
    from olmo.tracking.tracked_run import TrackedRun
    from olmo.train.trainer import Trainer


class MLflowCallback(Callback):
    """Logs every train metric at step = optimizer step (``train/flops``, ``train/pflops`` (the same in 1e15)
    and ``train/tokens`` with every loss),
    the eval metrics at the step they were computed, and a few derived params (parameter count, budget).

    ``run`` is None on ranks other than 0: the callback then does nothing but keeps the same hooks, so every
    rank runs the same code. Its state (the run id) is saved in checkpoints, so a resumed job continues the
    same MLflow run; metrics of steps already logged before the interruption are not logged twice.
    """

    name = "mlflow"

    def __init__(self, run: TrackedRun | None) -> None:
        self.run = run
        self.checkpoint_run_id: str | None = None  # the run id found in the checkpoint resumed from
        self.hook_seconds: list[float] = []  # time spent in on_step_end, per step (the logging overhead)
        self._logged_train_step = -1
        self._logged_eval_step = -1

    def on_train_start(self, trainer: Trainer) -> None:
        if self.run is None:
            return
        if self.run.resumed:
            self._logged_train_step = _or(self.run.last_logged_step("train/loss"), -1)
            self._logged_eval_step = _or(self.run.last_logged_step("eval/loss"), -1)
        budget = trainer.budget
        self.run.log_params({
            "derived.num_params": sum(p.numel() for p in trainer.model.parameters()),
            "derived.world_size": trainer.env.world_size,
            "derived.budget_steps": budget.steps,
            "derived.tokens_per_step": budget.tokens_per_step,
            "derived.flops_per_step": budget.flops_per_step,
        })
        self.run.start_system_metrics()

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.run is None:
            return
        start = time.perf_counter()
        step = int(metrics["step"])
        if step > self._logged_train_step:
            logged = {k: v for k, v in metrics.items() if k != "step"}
            if "train/flops" in logged:  # legible on a chart axis (MLflow prints raw FLOPs as 25000000000000)
                logged["train/pflops"] = logged["train/flops"] / 1e15
            self.run.log_metrics(logged, step)
        self.hook_seconds.append(time.perf_counter() - start)

    def on_eval_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.run is None:
            return
        step = int(metrics["step"])
        if step > self._logged_eval_step:  # train/flops and train/tokens of this step came with its train metrics
            self.run.log_metrics({k: v for k, v in metrics.items() if k.startswith("eval/")}, step)

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        if self.run is not None:
            self.run.flush()

    def state_dict(self) -> dict[str, Any] | None:
        return {"run_id": self.run.run_id} if self.run is not None else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.checkpoint_run_id = state.get("run_id")


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
