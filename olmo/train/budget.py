"""Training budgets: steps, tokens or FLOPs, all turned into an exact number of optimizer steps."""

from __future__ import annotations

from dataclasses import dataclass

from olmo.config.model import ModelConfig
from olmo.config.train import TrainConfig
from olmo.errors import OLMoConfigurationError
from olmo.nn.flops import flops_per_token


@dataclass(frozen=True)
class Budget:
    steps: int
    tokens_per_step: int
    flops_per_step: int

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def flops(self) -> int:
        return self.steps * self.flops_per_step


def training_budget(model: ModelConfig, train: TrainConfig) -> Budget:
    """Steps that fit the budget without exceeding it (floor), so every variant gets at most the same compute.

    FLOPs per step = global_batch_size * seq_len tokens * (forward + backward FLOPs per token at seq_len).
    """
    tokens_per_step = train.global_batch_size * train.seq_len
    flops_per_step = tokens_per_step * flops_per_token(model, train.seq_len).total
    if train.max_steps is not None:
        steps = train.max_steps
    elif train.max_tokens is not None:
        steps = train.max_tokens // tokens_per_step
        if steps < 1:
            raise OLMoConfigurationError(
                f"train.max_tokens={train.max_tokens} is less than one step ({tokens_per_step} tokens)"
            )
    else:
        steps = int(train.max_flops // flops_per_step)
        if steps < 1:
            raise OLMoConfigurationError(
                f"train.max_flops={train.max_flops:.3g} is less than one step ({flops_per_step:.3g} FLOPs)"
            )
    return Budget(steps=steps, tokens_per_step=tokens_per_step, flops_per_step=flops_per_step)
