"""Samplers: how beam search picks the candidate tokens of each node and the beams that survive a step.

A sampler has two decisions to make at every step (the design of AllenNLP's beam search):

- ``sample_nodes(log_probs (N, V), per_node_beam_size, state)``: for each of the N live nodes (batch x beam),
  pick ``per_node_beam_size`` candidate next tokens; returns their log-probabilities and indices (N, k).
- ``sample_beams(log_probs (B, C), beam_size, state)``: among the C candidates of each batch row, scored by the
  summed log-probability of their whole sequence, keep ``beam_size``; returns the kept scores and the indices
  into C (B, beam_size).

The log-probabilities the samplers return are always the model's (normalised, untempered) log-probabilities,
so sequence scores stay comparable; temperature and truncation only change *which* tokens are drawn.
``state`` is a dict of tensors a sampler may keep between steps (the Gumbel sampler does); beam search
reorders nothing in it, a sampler that needs per-beam state keeps it aligned itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from olmo.errors import bad_value

SamplerState = dict[str, torch.Tensor]
_FLOOR = 1e-30


class Sampler(ABC):
    def init_state(self, start_log_probs: torch.Tensor, batch_size: int, num_classes: int) -> SamplerState:
        return {}

    @abstractmethod
    def sample_nodes(
        self, log_probs: torch.Tensor, per_node_beam_size: int, state: SamplerState
    ) -> tuple[torch.Tensor, torch.Tensor, SamplerState]:
        """(N, V) log-probabilities -> (N, k) chosen log-probabilities, (N, k) token ids, new state."""

    def sample_beams(
        self, log_probs: torch.Tensor, beam_size: int, state: SamplerState
    ) -> tuple[torch.Tensor, torch.Tensor, SamplerState]:
        """(B, C) sequence scores -> the best ``beam_size`` of them (scores, indices into C), new state."""
        values, indices = log_probs.topk(beam_size, dim=-1)
        return values, indices, state


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise bad_value("temperature", temperature, "a positive number (use the deterministic sampler for greedy)")


class DeterministicSampler(Sampler):
    """The ``k`` most likely tokens of each node: greedy decoding at beam size 1, classic beam search above."""

    def sample_nodes(self, log_probs, per_node_beam_size, state):
        values, indices = log_probs.topk(per_node_beam_size, dim=-1)
        return values, indices, state


class MultinomialSampler(Sampler):
    """Draws each node's candidates from softmax(logits / temperature) (ancestral sampling)."""

    def __init__(self, temperature: float = 1.0, with_replacement: bool = False) -> None:
        _check_temperature(temperature)
        self.temperature = temperature
        self.with_replacement = with_replacement

    def _draw(self, weights: torch.Tensor, k: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """k indices per row drawn in proportion to ``weights``.

        Without replacement, a row needs k drawable entries: a finished beam (only EOS possible) or a very peaked
        distribution has fewer. So every candidate keeps a floor weight of 1e-30: it is drawn only once the
        likely ones are exhausted, and its log-probability (often -inf) keeps it out of the kept beams.
        """
        floor = weights.clamp(min=_FLOOR)
        if candidates is not None:
            floor = floor.masked_fill(~candidates, 0.0)
        return torch.multinomial(floor, k, replacement=self.with_replacement)

    def sample_nodes(self, log_probs, per_node_beam_size, state):
        if per_node_beam_size > log_probs.shape[-1] and not self.with_replacement:
            raise bad_value("per_node_beam_size", per_node_beam_size, f"at most the vocabulary {log_probs.shape[-1]}")
        weights = torch.softmax(log_probs / self.temperature, dim=-1)
        indices = self._draw(weights, per_node_beam_size)
        return log_probs.gather(-1, indices), indices, state


class TopKSampler(MultinomialSampler):
    """Samples among the ``k`` most likely tokens only (renormalised, then tempered)."""

    def __init__(self, k: int = 1, temperature: float = 1.0, with_replacement: bool = False) -> None:
        super().__init__(temperature, with_replacement)
        if k < 1:
            raise bad_value("top_k", k, "a positive integer")
        self.k = k

    def sample_nodes(self, log_probs, per_node_beam_size, state):
        k = min(self.k, log_probs.shape[-1])
        if per_node_beam_size > k and not self.with_replacement:
            raise bad_value("per_node_beam_size", per_node_beam_size, f"at most top_k={k} without replacement")
        top_values, top_indices = log_probs.topk(k, dim=-1)
        picked = self._draw(torch.softmax(top_values / self.temperature, dim=-1), per_node_beam_size)
        return top_values.gather(-1, picked), top_indices.gather(-1, picked), state


class TopPSampler(MultinomialSampler):
    """Nucleus sampling: samples among the smallest set of most likely tokens whose probability reaches ``p``.

    The most likely token is always in the nucleus; when fewer tokens than ``per_node_beam_size`` are in it
    (and sampling is without replacement), the nucleus is widened by the next most likely tokens.
    """

    def __init__(self, p: float = 0.9, temperature: float = 1.0, with_replacement: bool = False) -> None:
        super().__init__(temperature, with_replacement)
        if not 0.0 < p <= 1.0:
            raise bad_value("top_p", p, "a probability in (0, 1]")
        self.p = p

    def sample_nodes(self, log_probs, per_node_beam_size, state):
        if per_node_beam_size > log_probs.shape[-1]:
            raise bad_value("per_node_beam_size", per_node_beam_size, f"at most the vocabulary {log_probs.shape[-1]}")
        tempered = torch.log_softmax(log_probs / self.temperature, dim=-1)
        sorted_lp, sorted_idx = tempered.sort(dim=-1, descending=True)
        cumulative = sorted_lp.exp().cumsum(dim=-1)
        # Keep a token when the mass before it is below p: the first token always, and the one crossing p.
        outside = (cumulative - sorted_lp.exp()) >= self.p
        if not self.with_replacement:
            outside[..., :per_node_beam_size] = False
        picked = self._draw(sorted_lp.exp(), per_node_beam_size, candidates=~outside)
        indices = sorted_idx.gather(-1, picked)
        return log_probs.gather(-1, indices), indices, state


class GumbelSampler(Sampler):
    """Stochastic beam search (Kool, van Hoof and Welling, 2019): sampling without replacement of whole sequences.

    Every node carries a Gumbel-perturbed score G; its children draw perturbed scores conditioned on their
    maximum being the parent's G (the "Gumbel top-k trick" applied down the tree), and the beams kept are the
    ones with the largest perturbed scores. The returned scores are the true log-probabilities.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        _check_temperature(temperature)
        self.temperature = temperature

    def init_state(self, start_log_probs, batch_size, num_classes):
        zeros = start_log_probs.new_zeros(batch_size, 1)
        return {"phi": zeros, "gumbel": zeros}  # the root of each row: log-probability 0, perturbed score 0

    def sample_nodes(self, log_probs, per_node_beam_size, state):
        tempered = torch.log_softmax(log_probs / self.temperature, dim=-1) if self.temperature != 1.0 else log_probs
        phi = state["phi"] + tempered  # (N, V) tempered log-probability of every child sequence
        perturbed = self.gumbel_with_max(phi, state["gumbel"])
        top_perturbed, indices = perturbed.topk(per_node_beam_size, dim=-1)
        child_state = {"phi": phi.gather(-1, indices), "gumbel": top_perturbed}
        return log_probs.gather(-1, indices), indices, child_state

    def sample_beams(self, log_probs, beam_size, state):
        # The candidates of a row are its nodes' children in order: keep the largest perturbed scores.
        b = log_probs.shape[0]
        perturbed = state["gumbel"].reshape(b, -1)
        _, indices = perturbed.topk(beam_size, dim=-1)
        phi = state["phi"].reshape(b, -1).gather(-1, indices)
        gumbel = perturbed.gather(-1, indices)
        new_state = {"phi": phi.reshape(-1, 1), "gumbel": gumbel.reshape(-1, 1)}
        return log_probs.gather(-1, indices), indices, new_state

    @staticmethod
    def gumbel(phi: torch.Tensor) -> torch.Tensor:
        """phi + Gumbel(0, 1) noise."""
        u = torch.rand_like(phi).clamp(min=torch.finfo(phi.dtype).tiny, max=1.0 - torch.finfo(phi.dtype).eps)
        return phi - torch.log(-torch.log(u))

    def gumbel_with_max(self, phi: torch.Tensor, target_max: torch.Tensor) -> torch.Tensor:
        """Gumbel-perturbed phi (N, V), shifted so that each row's maximum equals ``target_max`` (N, 1).

        Numerically stable form of ``-log(exp(-T) - exp(-Z) + exp(-G))`` (Kool et al., appendix B).
        """
        g = self.gumbel(phi)
        z = g.max(dim=-1, keepdim=True).values
        v = target_max - g + _log1mexp(g - z)
        return target_max - v.clamp(min=0) - torch.log1p(torch.exp(-v.abs()))


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for large |x|; -inf at x = 0."""
    x = x.clamp(max=0.0)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


SAMPLERS = {
    "deterministic": DeterministicSampler,
    "greedy": DeterministicSampler,
    "multinomial": MultinomialSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
    "gumbel": GumbelSampler,
}
