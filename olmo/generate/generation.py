"""``generate``: beam search / sampling from an OLMo model with its KV cache (``OLMo.generate`` delegates here).

Semantics follow the original OLMo's ``generate``:

- ``input_ids`` (B, T) are the prompts, **left-padded** to a common length with ``attention_mask`` (B, T) marking
  the real tokens (1) and the padding (0); None means no padding.
- The result holds the generated tokens only (not the prompt), per beam, best first, and the beams' scores:
  ``OLMoGenerateOutput(token_ids (B, beam, <= max_steps), scores (B, beam))``. The end index is
  ``config.eos_token_id``; every beam that ended is padded with it up to the longest one.
- The first step runs the whole prompt; each later step feeds one token per beam with the KV cache and
  ``last_logits_only``, and the log-softmax of those logits (in fp32) drives the search.

Positions are indices in the padded row, as in the original: with left padding, a row's tokens sit at
positions shifted by its padding. That changes nothing for RoPE and ALiBi (they see only relative distances)
nor for NoPE, but a model with learned absolute positions (``positional='learned'``) scores a padded prompt
slightly differently from the same prompt alone; batch only equal-length prompts with such models.

Unlike the original, the model is put in eval mode for the call (and restored after): dropout never perturbs a
generation; and there is no ``attention_bias`` argument (the original's only use of it is a precomputed
(B, 1, S, S) bias, which ``attention_mask`` covers for padding).

Decoding runs the lean single-token step of ``olmo.generate.decoder`` (a preallocated KV cache, no module calls)
when the model is within its scope, and ``OLMo.forward`` with ``past_key_values`` otherwise; both give the same
tokens and scores (tests/test_generate.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from olmo.generate.beam_search import BeamSearch, StepState
from olmo.generate.constraints import Constraint
from olmo.generate.decoder import FastDecoder, choose_linear_kernel, fast_decode_unsupported
from olmo.generate.samplers import Sampler
from olmo.generate.scorers import FinalSequenceScorer

if TYPE_CHECKING:
    from olmo.nn.model import OLMo


class OLMoGenerateOutput(NamedTuple):
    token_ids: torch.Tensor  # (B, beam, <= max_steps) generated ids, best beam first
    scores: torch.Tensor  # (B, beam) final scores of the beams, descending


@torch.no_grad()
def generate(
    model: OLMo,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_steps: int = 10,
    beam_size: int = 1,
    per_node_beam_size: int | None = None,
    sampler: Sampler | None = None,
    min_steps: int | None = None,
    final_sequence_scorer: FinalSequenceScorer | None = None,
    constraints: list[Constraint] | None = None,
    decoder: str = "auto",
) -> OLMoGenerateOutput:
    """See the module docstring. ``decoder``: "auto" decodes with the lean step of olmo.generate.decoder when the
    model is supported (else with ``OLMo.forward``), "forward" always with ``OLMo.forward`` (the reference)."""
    if decoder not in ("auto", "forward"):
        raise ValueError(f"decoder={decoder!r} is invalid; allowed: 'auto', 'forward'")
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be (batch, prompt length >= 1); got shape {tuple(input_ids.shape)}")
    batch_size, prompt_len = input_ids.shape
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected that of input_ids "
                f"{tuple(input_ids.shape)}"
            )
        if bool(attention_mask.all()):
            attention_mask = None  # no padding: the model's causal fast path applies
        else:
            # One column per step to come, filled in advance: a step only slices it (the beam search reorders
            # it with the KV cache).
            attention_mask = torch.cat(
                [attention_mask.to(torch.long), attention_mask.new_ones(batch_size, max_steps, dtype=torch.long)],
                dim=1,
            )

    fast = None
    if decoder == "auto" and fast_decode_unsupported(model) is None:
        rows = batch_size * beam_size
        fast = FastDecoder(model, linear=choose_linear_kernel(model.device, rows, max_steps), rows=rows)

    def fast_step(last_predictions: torch.Tensor, state: StepState, timestep: int) -> tuple[torch.Tensor, StepState]:
        mask = state.get("attention_mask")
        if timestep == 0:  # the prompt: the model's forward, then its cache moves into preallocated buffers
            out = model(
                state["input_ids"], attention_mask=mask[:, :prompt_len] if mask is not None else None,
                use_cache=True, last_logits_only=True,
            )
            keys, values = fast.allocate(out.attn_key_values, capacity=prompt_len + max_steps)
            new_state: StepState = {"keys": keys, "values": values}
            if mask is not None:
                new_state["attention_mask"] = mask
            return F.log_softmax(out.logits[:, -1, :].float(), dim=-1), new_state
        position = prompt_len + timestep - 1
        # inference_mode (no autograd bookkeeping at all) saves a tenth of a small model's step. Only here: the
        # step creates nothing that outlives it but the log-probabilities, whereas a forward under inference_mode
        # could fill the model's buffer cache (RoPE tables, masks) with tensors that autograd later refuses.
        with torch.inference_mode():
            logits = fast.step(last_predictions, state["keys"], state["values"], position, mask)
            return F.log_softmax(logits.float(), dim=-1), state

    def step(last_predictions: torch.Tensor, state: StepState, timestep: int) -> tuple[torch.Tensor, StepState]:
        mask = state.get("attention_mask")
        if timestep == 0:
            ids, past = state["input_ids"], None
        else:
            ids, past = last_predictions.unsqueeze(1), state["past_key_values"]
        k_len = prompt_len + timestep
        out = model(
            ids,
            attention_mask=mask[:, :k_len] if mask is not None else None,
            past_key_values=past,
            use_cache=True,
            last_logits_only=True,
        )
        log_probs = F.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        new_state: StepState = {"past_key_values": out.attn_key_values}
        if mask is not None:
            new_state["attention_mask"] = mask
        return log_probs, new_state

    search = BeamSearch(
        model.config.eos_token_id,
        max_steps=max_steps,
        beam_size=beam_size,
        per_node_beam_size=per_node_beam_size,
        sampler=sampler,
        min_steps=min_steps,
        final_sequence_scorer=final_sequence_scorer,
        constraints=constraints,
    )
    start_state: StepState = {"input_ids": input_ids}
    if attention_mask is not None:
        start_state["attention_mask"] = attention_mask
    was_training = model.training
    model.eval()
    try:
        token_ids, scores = search.search(input_ids[:, -1], start_state, fast_step if fast is not None else step)
    finally:
        model.train(was_training)
    return OLMoGenerateOutput(token_ids=token_ids, scores=scores)
