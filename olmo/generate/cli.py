"""What ``generate.py`` does, without Hydra: the config schema and ``run_generate(cfg)``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from olmo.errors import bad_value
from olmo.generate.constraints import BannedTokensConstraint, Constraint, RepeatedNGramBlockingConstraint
from olmo.generate.samplers import (
    DeterministicSampler,
    GumbelSampler,
    MultinomialSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
)
from olmo.generate.scorers import LengthNormalizedSequenceLogProbabilityScorer

SAMPLER_NAMES = ("deterministic", "greedy", "multinomial", "top_k", "top_p", "gumbel")


@dataclass
class GenerateConfig:
    checkpoint: str = "???"  # export / step<N> / run folder, original OLMo checkpoint, or an MLflow run id
    prompt: str = ""
    prompts: list[str] = field(default_factory=list)  # several prompts, one left-padded batch (overrides prompt)
    max_steps: int = 64
    min_steps: int | None = None
    beam_size: int = 1
    per_node_beam_size: int | None = None
    num_return: int = 1  # beams printed per prompt, best first
    sampler: str = "deterministic"  # deterministic (greedy) | multinomial | top_k | top_p | gumbel
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 0.9
    with_replacement: bool = False
    length_penalty: float | None = None  # None: summed log-probability; a number: length-normalised scores
    ngram_block: int | None = None  # never repeat an n-gram of this size
    seed: int = 0
    device: str = "auto"  # auto = cuda if available
    tokenizer: str | None = None  # a tokenizer.json; default: the one saved with the checkpoint
    prepend_eos: bool = True  # start from a document boundary, as in training
    ban_padding_ids: bool = True  # never emit ids beyond the tokenizer's vocabulary (embedding padding rows)
    show_scores: bool = False
    tracking_uri: str | None = None  # for run ids: default $MLFLOW_TRACKING_URI, else sqlite:///<results_dir>/mlflow.db
    results_dir: str = "results"


def build_sampler(cfg: GenerateConfig) -> Sampler:
    name = cfg.sampler
    if name in ("deterministic", "greedy"):
        return DeterministicSampler()
    if name == "multinomial":
        return MultinomialSampler(cfg.temperature, cfg.with_replacement)
    if name == "top_k":
        return TopKSampler(cfg.top_k, cfg.temperature, cfg.with_replacement)
    if name == "top_p":
        return TopPSampler(cfg.top_p, cfg.temperature, cfg.with_replacement)
    if name == "gumbel":
        return GumbelSampler(cfg.temperature)
    raise bad_value("sampler", name, SAMPLER_NAMES)


def run_generate(cfg: GenerateConfig, echo: bool = True) -> list[list[str]]:
    """Load, generate, print; returns the texts (prompt + continuation), ``num_return`` per prompt."""
    from olmo.generate.loading import load_for_generation

    if cfg.checkpoint in ("???", ""):
        raise bad_value("checkpoint", cfg.checkpoint, "a checkpoint folder or an MLflow run id")
    if not 1 <= cfg.num_return <= cfg.beam_size:
        raise bad_value("num_return", cfg.num_return, f"an integer in [1, beam_size={cfg.beam_size}]")
    sampler = build_sampler(cfg)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_for_generation(cfg.checkpoint, device, cfg.tokenizer, cfg.tracking_uri, cfg.results_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    if tokenizer is None:
        raise bad_value(
            "tokenizer", None, f"a tokenizer.json: none is saved with {loaded.path} (runs save it in their "
            "train.save_folder and final/); pass tokenizer=/path/to/tokenizer.json",
        )
    eos = model.config.eos_token_id
    prompts = list(cfg.prompts) or [cfg.prompt]
    encoded = [([eos] if cfg.prepend_eos else []) + tokenizer.encode(p).ids for p in prompts]
    if any(len(ids) == 0 for ids in encoded):
        raise bad_value("prompt", "", "a non-empty prompt (or prepend_eos=true)")
    input_ids, attention_mask = left_pad(encoded, pad_id=model.config.pad_token_id, device=model.device)

    constraints: list[Constraint] = []
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if cfg.ban_padding_ids and vocab < model.config.padded_embedding_size:
        constraints.append(BannedTokensConstraint(range(vocab, model.config.padded_embedding_size)))
    if cfg.ngram_block is not None:
        constraints.append(RepeatedNGramBlockingConstraint(cfg.ngram_block))
    scorer = None
    if cfg.length_penalty is not None:
        scorer = LengthNormalizedSequenceLogProbabilityScorer(cfg.length_penalty)

    torch.manual_seed(cfg.seed)
    out = model.generate(
        input_ids, attention_mask, max_steps=cfg.max_steps, beam_size=cfg.beam_size,
        per_node_beam_size=cfg.per_node_beam_size, sampler=sampler, min_steps=cfg.min_steps,
        final_sequence_scorer=scorer, constraints=constraints,
    )
    texts: list[list[str]] = []
    for i, prompt in enumerate(prompts):
        row = []
        for j in range(cfg.num_return):
            ids = out.token_ids[i, j].tolist()
            if eos in ids:
                ids = ids[: ids.index(eos)]
            text = prompt + tokenizer.decode(ids, skip_special_tokens=False)
            row.append(text)
            if echo:
                if len(prompts) > 1 or cfg.num_return > 1 or cfg.show_scores:
                    print(f"--- prompt {i}, beam {j}, score {out.scores[i, j].item():.4f}")
                print(text)
        texts.append(row)
    return texts


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device | str = "cpu"):
    """Token id lists -> (input_ids, attention_mask), left-padded to the longest (what generate expects)."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, length - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, length - len(s) :] = 1
    return ids.to(device), mask.to(device)
