"""Fixed-length training and validation batches, a pure function of (seed, epoch, step) and the rank.

The stream is cut into instances of seq_len tokens: instance i is tokens [i * seq_len, (i + 1) * seq_len), so
instances pack documents end to end (each followed by EOS) and ``doc_lens`` gives each row's document pieces.
An epoch visits the instances in a seeded permutation; step s of the epoch takes the s-th block of
global_batch_size instances of it, and rank r its r-th block of global_batch_size // world_size. The tail of
an epoch that does not fill a whole global batch is skipped (a different tail each epoch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch

from olmo.data.stream import TokenStream
from olmo.errors import bad_value

ORDER_STREAM = 0x0DE5  # separates the batch order's random stream from the validation split's


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # int64 (B, seq_len); labels are input_ids shifted left, inside each row
    doc_lens: torch.Tensor  # int64 (B, max_docs): document piece lengths, zero-padded; rows sum to seq_len
    max_doc_lens: list[int]  # longest piece of each row (what varlen attention kernels want)
    instances: torch.Tensor  # int64 (B,): instance index of each row in its stream
    step: int  # training step (validation: batch index)
    epoch: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.input_ids.to(device, non_blocking=non_blocking),
            self.doc_lens.to(device, non_blocking=non_blocking),
            self.max_doc_lens,
            self.instances,
            self.step,
            self.epoch,
        )


def read_instances(stream: TokenStream, seq_len: int, instances: np.ndarray, step: int, epoch: int) -> Batch:
    rows = [stream.read(int(i) * seq_len, seq_len) for i in instances]
    max_docs = max((len(lens) for _, lens in rows), default=1)
    doc_lens = np.zeros((len(rows), max_docs), dtype=np.int64)
    for r, (_, lens) in enumerate(rows):
        doc_lens[r, : len(lens)] = lens
    input_ids = np.stack([ids for ids, _ in rows]) if rows else np.zeros((0, seq_len), dtype=np.int64)
    return Batch(
        input_ids=torch.from_numpy(input_ids),
        doc_lens=torch.from_numpy(doc_lens),
        max_doc_lens=[int(lens.max()) for _, lens in rows],
        instances=torch.as_tensor(np.asarray(instances, dtype=np.int64)),
        step=step,
        epoch=epoch,
    )


def _check_ranks(batch_field: str, batch_size: int, rank: int, world_size: int) -> None:
    if world_size < 1:
        raise bad_value("world_size", world_size, "a positive integer")
    if not 0 <= rank < world_size:
        raise bad_value("rank", rank, f"an integer in [0, world_size={world_size})")
    if batch_size < 1 or batch_size % world_size:
        raise bad_value(batch_field, batch_size, f"a positive multiple of world_size={world_size}")


class TrainBatches:
    """Training batches for one rank; ``batch(step)`` is computed directly, so resuming is just a step number."""

    def __init__(
        self,
        stream: TokenStream,
        seq_len: int,
        global_batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if seq_len < 1:
            raise bad_value("seq_len", seq_len, "a positive integer")
        if seed < 0:
            raise bad_value("seed", seed, "a non-negative integer")
        _check_ranks("global_batch_size", global_batch_size, rank, world_size)
        self.stream = stream
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.local_batch_size = global_batch_size // world_size
        self.instances_per_epoch = stream.num_tokens // seq_len
        self.steps_per_epoch = self.instances_per_epoch // global_batch_size
        if self.steps_per_epoch < 1:
            raise bad_value(
                "global_batch_size",
                global_batch_size,
                f"at most {self.instances_per_epoch} (the training split has {stream.num_tokens} tokens, "
                f"{self.instances_per_epoch} instances of seq_len={seq_len})",
            )
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step over all ranks."""
        return self.global_batch_size * self.seq_len

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of instance indices visited in `epoch` (cached for the current epoch)."""
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, ORDER_STREAM])
            self._order = (epoch, rng.permutation(self.instances_per_epoch))
        return self._order[1]

    def global_instances(self, step: int) -> np.ndarray:
        """Instance indices of the whole global batch at `step` (all ranks)."""
        if step < 0:
            raise bad_value("step", step, "a non-negative integer")
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        start = in_epoch * self.global_batch_size
        return self.epoch_order(epoch)[start : start + self.global_batch_size]

    def batch(self, step: int) -> Batch:
        """This rank's share of the global batch at `step`."""
        local = self.global_instances(step)[self.rank * self.local_batch_size : (self.rank + 1) * self.local_batch_size]
        return read_instances(self.stream, self.seq_len, local, step, step // self.steps_per_epoch)

    def iter_from(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[Batch]:
        """Batches from `start_step` on (forever, rolling over epochs, unless num_steps is given)."""
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)


class ValidationBatches(Sequence[Batch]):
    """A fixed list of validation batches: instances in stream order, whole batches only, sliced by rank."""

    def __init__(
        self,
        stream: TokenStream,
        seq_len: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        max_batches: int | None = None,
    ) -> None:
        if seq_len < 1:
            raise bad_value("seq_len", seq_len, "a positive integer")
        _check_ranks("batch_size", batch_size, rank, world_size)
        if max_batches is not None and max_batches < 0:
            raise bad_value("max_batches", max_batches, "None or a non-negative integer")
        self.stream = stream
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.local_batch_size = batch_size // world_size
        self.num_instances = stream.num_tokens // seq_len
        n = self.num_instances // batch_size  # every rank must run the same number of batches
        self._len = n if max_batches is None else min(n, max_batches)

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> Batch: ...

    @overload
    def __getitem__(self, index: slice) -> list[Batch]: ...

    def __getitem__(self, index: int | slice) -> Batch | list[Batch]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"validation batch {index} out of range ({self._len} batches)")
        start = index * self.batch_size + self.rank * self.local_batch_size
        return read_instances(self.stream, self.seq_len, np.arange(start, start + self.local_batch_size), index, 0)

    def __iter__(self) -> Iterator[Batch]:
        for i in range(self._len):
            yield self[i]
