"""Constraints: rules that forbid some next tokens given what each beam has generated so far.

A constraint keeps one state per (batch row, beam). Beam search calls, in order:

- ``init_state(batch_size)`` once: a state for the single start node of each row;
- ``apply(state, log_probs (B, beam, V))`` before sampling: returns the log-probabilities with the forbidden
  tokens set to -inf;
- ``update_state(state, last_prediction (B, beam), backpointer (B, beam) or None)`` after each step: the new
  beam j descends from old beam ``backpointer[b, j]`` and just emitted ``last_prediction[b, j]``.

The base class handles the reordering: a subclass implements ``init_beam_state`` (a fresh per-beam state),
``apply_beam`` and ``advance_beam`` for one beam, or overrides ``apply`` to vectorise.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any

import torch

from olmo.errors import bad_value

ConstraintState = list[list[Any]]  # [batch][beam] -> this constraint's state of that beam


class Constraint(ABC):
    def init_state(self, batch_size: int) -> ConstraintState:
        return [[self.init_beam_state()] for _ in range(batch_size)]

    @abstractmethod
    def init_beam_state(self) -> Any:
        """The state of a beam that has generated nothing yet."""

    def apply(self, state: ConstraintState, log_probs: torch.Tensor) -> torch.Tensor:
        """Mask the forbidden tokens of every beam; log_probs is (B, beam, V) and is not modified."""
        banned = [
            (b, k, token)
            for b, beams in enumerate(state)
            for k, beam_state in enumerate(beams)
            for token in self.banned_tokens(beam_state)
        ]
        if not banned:
            return log_probs
        index = torch.tensor(banned, dtype=torch.long, device=log_probs.device).T
        log_probs = log_probs.clone()
        log_probs[index[0], index[1], index[2]] = float("-inf")
        return log_probs

    def banned_tokens(self, beam_state: Any) -> list[int]:
        return []

    @abstractmethod
    def advance_beam(self, beam_state: Any, token: int) -> Any:
        """The state after this beam emitted ``token`` (may mutate and return ``beam_state``: it is a copy)."""

    def update_state(
        self, state: ConstraintState, last_prediction: torch.Tensor, backpointer: torch.Tensor | None
    ) -> ConstraintState:
        tokens = last_prediction.tolist()
        parents = backpointer.tolist() if backpointer is not None else [[0] * len(row) for row in tokens]
        return [
            [self.advance_beam(copy.deepcopy(row[parent]), token) for parent, token in zip(p_row, t_row, strict=True)]
            for row, p_row, t_row in zip(state, parents, tokens, strict=True)
        ]


class RepeatedNGramBlockingConstraint(Constraint):
    """Never generate the same n-gram twice within a beam (n-grams of the generated tokens, not the prompt)."""

    def __init__(self, ngram_size: int) -> None:
        if ngram_size < 1:
            raise bad_value("ngram_size", ngram_size, "a positive integer")
        self.ngram_size = ngram_size

    def init_beam_state(self) -> dict[str, Any]:
        # seen: (n-1)-gram prefix -> tokens that followed it; recent: the last n-1 tokens
        return {"seen": {}, "recent": ()}

    def banned_tokens(self, beam_state):
        if len(beam_state["recent"]) < self.ngram_size - 1:
            return []
        return list(beam_state["seen"].get(beam_state["recent"], ()))

    def advance_beam(self, beam_state, token):
        recent = beam_state["recent"]
        if len(recent) == self.ngram_size - 1:
            beam_state["seen"].setdefault(recent, set()).add(token)
        keep = self.ngram_size - 1
        beam_state["recent"] = (recent + (token,))[-keep:] if keep else ()
        return beam_state


class BannedTokensConstraint(Constraint):
    """Never generate the given token ids (e.g. the padding rows of an embedding larger than the vocabulary)."""

    def __init__(self, token_ids: list[int] | range) -> None:
        self.token_ids = torch.as_tensor(list(token_ids), dtype=torch.long)

    def init_beam_state(self) -> None:
        return None

    def apply(self, state, log_probs):
        if self.token_ids.numel() == 0:
            return log_probs
        return log_probs.index_fill(-1, self.token_ids.to(log_probs.device), float("-inf"))

    def advance_beam(self, beam_state, token):
        return None

    def update_state(self, state, last_prediction, backpointer):
        return [[None] * last_prediction.shape[1] for _ in range(last_prediction.shape[0])]
