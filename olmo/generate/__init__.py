"""Generation: beam search with pluggable samplers, final scorers and constraints, on OLMo's KV cache.

Usage::

    from olmo.generate import TopPSampler, RepeatedNGramBlockingConstraint

    out = model.generate(input_ids, attention_mask, max_steps=32, beam_size=4,
                         sampler=TopPSampler(p=0.9, temperature=0.8),
                         constraints=[RepeatedNGramBlockingConstraint(3)])
    out.token_ids  # (B, beam, <= max_steps), best beam first, without the prompt
    out.scores     # (B, beam)

Samplers: DeterministicSampler (greedy / top-k beams), MultinomialSampler, TopKSampler, TopPSampler,
GumbelSampler (stochastic beam search). Scorers: SequenceLogProbabilityScorer (sum of log-probabilities),
LengthNormalizedSequenceLogProbabilityScorer(length_penalty). Constraints: RepeatedNGramBlockingConstraint,
BannedTokensConstraint; subclass Constraint for more.
"""

from olmo.generate.beam_search import BeamSearch
from olmo.generate.constraints import BannedTokensConstraint, Constraint, RepeatedNGramBlockingConstraint
from olmo.generate.generation import OLMoGenerateOutput, generate
from olmo.generate.samplers import (
    SAMPLERS,
    DeterministicSampler,
    GumbelSampler,
    MultinomialSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
)
from olmo.generate.scorers import (
    FinalSequenceScorer,
    LengthNormalizedSequenceLogProbabilityScorer,
    SequenceLogProbabilityScorer,
)

__all__ = [
    "BannedTokensConstraint",
    "BeamSearch",
    "Constraint",
    "DeterministicSampler",
    "FinalSequenceScorer",
    "GumbelSampler",
    "LengthNormalizedSequenceLogProbabilityScorer",
    "MultinomialSampler",
    "OLMoGenerateOutput",
    "RepeatedNGramBlockingConstraint",
    "SAMPLERS",
    "Sampler",
    "SequenceLogProbabilityScorer",
    "TopKSampler",
    "TopPSampler",
    "generate",
]
