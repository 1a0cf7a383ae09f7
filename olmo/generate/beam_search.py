"""Beam search over any step function, with pluggable samplers, final scorers and constraints.

The design follows AllenNLP's ``BeamSearch`` (as the original OLMo does); this is an independent implementation.
The search calls ``step(last_predictions (N,), state, timestep) -> (log_probs (N, V), state)`` (the timestep may
be left out of the signature), where ``state`` is a dict whose values are tensors with the N rows first (or
lists/tuples of them, e.g. a KV cache): the search expands it from the batch to batch x beam after the first step
and reorders it after every step, so the step function never needs to know about beams.

Every step, for each live node (batch row x beam) the sampler picks ``per_node_beam_size`` candidate tokens; the
candidates' sequence scores are their parent's summed log-probability plus their own, and the sampler keeps the
best ``beam_size`` of each row. The first step is the same with a single root node of score 0 per row.

A beam that has emitted ``end_index`` is finished: from then on it can only emit ``end_index`` again, at
log-probability 0, so its score stays put while it competes with the live beams. The search stops when every beam
of every row is finished, or after ``max_steps`` tokens. ``min_steps`` forbids ``end_index`` before that many
tokens. Finally the ``final_sequence_scorer`` scores the beams, which are returned best first.

Unlike the original, the first token is drawn by ``sample_nodes`` like every other token (the original picks it
with ``sample_beams``, i.e. the top-k, even with a sampling sampler); with the deterministic sampler the two agree.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from olmo.errors import bad_value
from olmo.generate.constraints import Constraint
from olmo.generate.samplers import DeterministicSampler, Sampler
from olmo.generate.scorers import FinalSequenceScorer, SequenceLogProbabilityScorer

StepState = dict[str, Any]
StepFunction = Callable[[torch.Tensor, StepState, int], tuple[torch.Tensor, StepState]]


class BeamSearch:
    def __init__(
        self,
        end_index: int,
        max_steps: int = 50,
        beam_size: int = 10,
        per_node_beam_size: int | None = None,
        sampler: Sampler | None = None,
        min_steps: int | None = None,
        final_sequence_scorer: FinalSequenceScorer | None = None,
        constraints: list[Constraint] | None = None,
    ) -> None:
        if max_steps < 1:
            raise bad_value("max_steps", max_steps, "a positive integer")
        if beam_size < 1:
            raise bad_value("beam_size", beam_size, "a positive integer")
        if per_node_beam_size is not None and per_node_beam_size < 1:
            raise bad_value("per_node_beam_size", per_node_beam_size, "None or a positive integer")
        if min_steps is not None and not 0 <= min_steps <= max_steps:
            raise bad_value("min_steps", min_steps, f"None or an integer in [0, max_steps={max_steps}]")
        self.end_index = end_index
        self.max_steps = max_steps
        self.beam_size = beam_size
        self.per_node_beam_size = per_node_beam_size or beam_size
        self.sampler = sampler or DeterministicSampler()
        self.min_steps = min_steps or 0
        self.final_sequence_scorer = final_sequence_scorer or SequenceLogProbabilityScorer()
        self.constraints = list(constraints or [])

    @torch.no_grad()
    def search(
        self, start_predictions: torch.Tensor, start_state: StepState, step: StepFunction
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the predictions (B, beam, T <= max_steps) and their final scores (B, beam), best first.

        ``step`` takes (last_predictions, state, timestep) or, like the original allows, (last_predictions, state).
        """
        batch_size, beam = start_predictions.shape[0], self.beam_size
        if _positional_arity(step) == 2:
            two_arg_step = step

            def step(last: torch.Tensor, state: StepState, timestep: int) -> tuple[torch.Tensor, StepState]:
                return two_arg_step(last, state)

        log_probs, state = step(start_predictions, start_state, 0)
        num_classes = log_probs.shape[-1]
        if beam > num_classes:
            raise bad_value("beam_size", beam, f"at most the number of classes {num_classes}")
        if self.per_node_beam_size > num_classes:
            raise bad_value(
                "per_node_beam_size", self.per_node_beam_size, f"at most the number of classes {num_classes}"
            )
        sampler_state = self.sampler.init_state(log_probs, batch_size, num_classes)
        constraint_states = [c.init_state(batch_size) for c in self.constraints]

        # Step 0: one root node per row, with score 0.
        log_probs = self._constrain(log_probs.unsqueeze(1), constraint_states).squeeze(1)
        if self.min_steps >= 1:
            log_probs = _forbid(log_probs, self.end_index)
        top_log_probs, top_classes, sampler_state = self.sampler.sample_nodes(log_probs, beam, sampler_state)
        scores, order, sampler_state = self.sampler.sample_beams(top_log_probs, beam, sampler_state)
        last_predictions = top_classes.gather(1, order)  # (B, beam)
        predictions = [last_predictions]
        backpointers: list[torch.Tensor] = []
        constraint_states = [
            c.update_state(s, last_predictions, None) for c, s in zip(self.constraints, constraint_states, strict=True)
        ]
        if beam > 1:
            state = _map_state(state, lambda t: t.repeat_interleave(beam, dim=0))
        row_offsets = torch.arange(batch_size, device=scores.device).unsqueeze(1) * beam

        # Greedy decoding (one candidate per row, the base class's top-k choice of beams) keeps its only
        # candidate: no sample_beams call, no gather. A small model's step is a few ms; these ops add up.
        single_candidate = beam == 1 and self.per_node_beam_size == 1 and _keeps_top_beams(self.sampler)
        for timestep in range(1, self.max_steps):
            flat_last = last_predictions.reshape(batch_size * beam)
            finished = flat_last == self.end_index
            n_finished = int(finished.sum())  # one reduction and one sync for both questions below
            if n_finished == finished.numel():
                break
            log_probs, state = step(flat_last, state, timestep)
            if self.constraints:
                log_probs = self._constrain(log_probs.view(batch_size, beam, -1), constraint_states)
                log_probs = log_probs.view(batch_size * beam, -1)
            if timestep < self.min_steps:
                log_probs = _forbid(log_probs, self.end_index)
            if n_finished:  # a finished beam can only continue with EOS, at no cost
                log_probs = torch.where(finished.unsqueeze(1), self._after_end(log_probs), log_probs)

            node_log_probs, node_classes, sampler_state = self.sampler.sample_nodes(
                log_probs, self.per_node_beam_size, sampler_state
            )
            if single_candidate:
                scores = node_log_probs + scores
                last_predictions = node_classes
            else:
                candidate_scores = (node_log_probs + scores.reshape(-1, 1)).reshape(batch_size, -1)
                scores, chosen, sampler_state = self.sampler.sample_beams(candidate_scores, beam, sampler_state)
                last_predictions = node_classes.reshape(batch_size, -1).gather(1, chosen)
            predictions.append(last_predictions)
            if beam > 1:
                backpointer = chosen // self.per_node_beam_size
                backpointers.append(backpointer)
                flat = (backpointer + row_offsets).reshape(-1)
                state = _map_state(state, lambda t, flat=flat: t.index_select(0, flat))
            elif self.constraints:
                backpointer = torch.zeros_like(last_predictions)
            constraint_states = [
                c.update_state(s, last_predictions, backpointer)
                for c, s in zip(self.constraints, constraint_states, strict=True)
            ]

        sequences = _reconstruct(predictions, backpointers)  # (B, beam, T)
        final_scores = self.final_sequence_scorer.score(sequences, scores, self.end_index)
        final_scores, order = final_scores.sort(dim=1, descending=True)
        sequences = sequences.gather(1, order.unsqueeze(-1).expand_as(sequences))
        return sequences, final_scores

    def _constrain(self, log_probs: torch.Tensor, states: list) -> torch.Tensor:
        for constraint, state in zip(self.constraints, states, strict=True):
            log_probs = constraint.apply(state, log_probs)
        return log_probs

    def _after_end(self, log_probs: torch.Tensor) -> torch.Tensor:
        after = torch.full_like(log_probs, float("-inf"))
        after[:, self.end_index] = 0.0
        return after


def _positional_arity(fn: Callable) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume the full form
        return None
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params)


def _forbid(log_probs: torch.Tensor, index: int) -> torch.Tensor:
    """A copy of ``log_probs`` where token ``index`` is impossible (one op: index_fill copies)."""
    return log_probs.index_fill(-1, torch.tensor([index], device=log_probs.device), float("-inf"))


def _keeps_top_beams(sampler: Sampler) -> bool:
    """Whether ``sampler`` chooses beams with the base class's plain top-k (with a single candidate per row,
    that choice keeps it)."""
    return type(sampler).sample_beams is Sampler.sample_beams


def _map_state(state: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor of a nested dict / list / tuple (the batch x beam rows come first)."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {k: _map_state(v, fn) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_map_state(v, fn) for v in state)
    return state


def _reconstruct(predictions: list[torch.Tensor], backpointers: list[torch.Tensor]) -> torch.Tensor:
    """Follow the backpointers from the last step to the first: (B, beam, T) token ids of each final beam."""
    if not backpointers:  # beam size 1: every step extends the single beam
        return torch.stack(predictions, dim=-1)
    tokens = [predictions[-1]]
    pointer = None
    for t in range(len(predictions) - 2, -1, -1):
        bp = backpointers[t] if pointer is None else backpointers[t].gather(1, pointer)
        pointer = bp
        tokens.append(predictions[t].gather(1, pointer))
    return torch.stack(tokens[::-1], dim=-1)
