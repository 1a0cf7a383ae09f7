"""Final sequence scorers: how the finished beams are ranked (and the scores generate() returns)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class FinalSequenceScorer(ABC):
    @abstractmethod
    def score(self, predictions: torch.Tensor, log_prob_sum: torch.Tensor, end_index: int) -> torch.Tensor:
        """predictions (B, beam, T) and their summed log-probabilities (B, beam) -> scores (B, beam)."""


class SequenceLogProbabilityScorer(FinalSequenceScorer):
    """The sum of the tokens' log-probabilities (the default; favours short sequences)."""

    def score(self, predictions, log_prob_sum, end_index):
        return log_prob_sum


class LengthNormalizedSequenceLogProbabilityScorer(FinalSequenceScorer):
    """log p(sequence) / length ** length_penalty; the length counts the tokens up to and including the first EOS.

    length_penalty 0 is the plain sum, 1 the mean log-probability per token; above 1 favours longer sequences.
    """

    def __init__(self, length_penalty: float = 1.0) -> None:
        self.length_penalty = length_penalty

    def score(self, predictions, log_prob_sum, end_index):
        lengths = sequence_lengths(predictions, end_index).to(log_prob_sum.dtype)
        return log_prob_sum / lengths.pow(self.length_penalty)


def sequence_lengths(predictions: torch.Tensor, end_index: int) -> torch.Tensor:
    """(..., T) token ids -> (...) number of tokens up to and including the first EOS (T if there is none).

    After the first EOS beam search only emits EOS, so this is the count of non-EOS tokens, plus one if the
    sequence ended.
    """
    ended = predictions[..., -1] == end_index
    return (predictions != end_index).sum(-1) + ended.long()
