"""Everything optional in training is a callback: speed/MFU, progress bar, non-finite guard, checkpoints.

Hooks are called in list order on every rank; a callback that only rank 0 should run checks
``trainer.env.is_main``. Callbacks with state to carry across a resume implement ``state_dict`` /
``load_state_dict`` (saved in the checkpoint's meta.json under the callback's ``name``).
"""

from __future__ import annotations

import math
import resource
import signal
import time
from typing import TYPE_CHECKING, Any

import torch

from olmo.distributed.env import all_reduce_max

if TYPE_CHECKING:
    from olmo.train.trainer import Trainer


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the optimizer step was not taken."""


class Callback:
    name: str = ""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_start(self, trainer: Trainer) -> None: ...

    def before_optimizer_step(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_eval_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Trainer, status: str) -> None: ...

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NonFiniteGuard(Callback):
    """Stops before the optimizer step when the loss is not finite, so the weights and checkpoints stay good."""

    name = "non_finite_guard"

    def before_optimizer_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        loss = metrics["train/loss"]
        if not math.isfinite(loss):
            last = trainer.last_checkpoint
            where = f"the last checkpoint ({last}) is intact" if last else "no checkpoint was written"
            raise NonFiniteLossError(
                f"non-finite loss {loss} at step {trainer.state.step + 1}: stopped before the optimizer step; "
                f"{where}. Lower optim.lr, enable train.grad_clip or use precision=fp32."
            )


class SpeedMonitor(Callback):
    """tokens/s, MFU (against ``peak_flops_per_second`` per device) and memory, per optimizer step."""

    name = "speed_monitor"

    def __init__(self, peak_flops_per_second: float) -> None:
        self.peak = peak_flops_per_second
        self._start = 0.0

    def on_step_start(self, trainer: Trainer) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        seconds = time.perf_counter() - self._start
        budget = trainer.budget
        metrics["train/step_seconds"] = seconds
        metrics["train/tokens_per_second"] = budget.tokens_per_step / seconds
        metrics["train/mfu"] = budget.flops_per_step / seconds / (self.peak * trainer.env.world_size)
        if torch.cuda.is_available():
            metrics["train/memory_bytes"] = float(torch.cuda.max_memory_allocated())
        else:
            metrics["train/memory_bytes"] = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


class ProgressBar(Callback):
    name = "progress_bar"

    def on_train_start(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=trainer.budget.steps, initial=trainer.state.step, disable=not trainer.env.is_main, unit="step"
        )

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        postfix = {"loss": f"{metrics['train/loss']:.3f}"}
        if "train/tokens_per_second" in metrics:
            postfix["tok/s"] = f"{metrics['train/tokens_per_second']:.0f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        self.bar.close()


class Checkpointer(Callback):
    """Saves every ``interval`` steps, at the end, and on SIGTERM/SIGUSR1 (preemption): then the run stops
    cleanly with status "preempted" so the job can be requeued and resume."""

    name = "checkpointer"
    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, interval: int | None, save_at_end: bool = True) -> None:
        self.interval = interval
        self.save_at_end = save_at_end
        self._signalled = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self._signalled = True

    def on_train_start(self, trainer: Trainer) -> None:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass

    def _preempted(self, trainer: Trainer) -> bool:
        flag = torch.tensor(float(self._signalled))
        if trainer.env.distributed:  # every rank must agree, since saving is collective
            flag = all_reduce_max(flag.to(trainer.env.device)).cpu()
        return bool(flag.item())

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        step = trainer.state.step
        if self._preempted(trainer):
            trainer.save_checkpoint()
            trainer.request_stop("preempted")
        elif self.interval and step % self.interval == 0 and step < trainer.budget.steps:
            trainer.save_checkpoint()

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        if status == "completed" and self.save_at_end and trainer.last_checkpoint_step != trainer.state.step:
            trainer.save_checkpoint()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
