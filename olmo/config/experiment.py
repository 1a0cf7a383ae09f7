"""ExperimentConfig: everything one training job needs, composed from the parts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from olmo.config.data import DataConfig
from olmo.config.model import ModelConfig
from olmo.config.train import DistributedConfig, OptimConfig, SchedulerConfig, TrainConfig
from olmo.errors import OLMoConfigurationError, bad_value


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=100))
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self, world_size: int = 1) -> None:
        try:
            self.model.validate()
        except OLMoConfigurationError as e:  # ModelConfig names its own fields; here they live under model.
            raise OLMoConfigurationError(f"model.{e}") from None
        self.data.validate()
        self.optim.validate()
        self.scheduler.validate()
        self.train.validate()
        self.distributed.validate()
        t = self.train
        if t.seq_len > self.model.max_sequence_length:
            raise bad_value(
                "train.seq_len", t.seq_len, f"at most model.max_sequence_length={self.model.max_sequence_length}"
            )
        if t.global_batch_size % world_size != 0:
            raise bad_value(
                "train.global_batch_size", t.global_batch_size, f"a multiple of the world size {world_size}"
            )
        local = t.global_batch_size // world_size
        if t.micro_batch_size is not None and local % t.micro_batch_size != 0:
            raise bad_value(
                "train.micro_batch_size", t.micro_batch_size, f"a divisor of the per-rank batch {local}"
            )

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        """Build from nested plain mappings (JSON, YAML); unknown keys fail with the section named."""
        parts = {}
        for f in dataclasses.fields(cls):
            section = dict(d.get(f.name) or {})
            default = f.default_factory()  # type: ignore[misc]
            part_cls = type(default)
            known = {pf.name for pf in dataclasses.fields(part_cls)}
            unknown = sorted(set(section) - known)
            if unknown:
                raise bad_value(f"{f.name}.{unknown[0]}", section[unknown[0]], f"a field of {part_cls.__name__}")
            parts[f.name] = dataclasses.replace(default, **section)
        unknown_sections = sorted(set(d) - set(parts))
        if unknown_sections:
            raise bad_value(unknown_sections[0], d[unknown_sections[0]], [f.name for f in dataclasses.fields(cls)])
        return cls(**parts)
