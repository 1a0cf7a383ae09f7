"""Export to Hugging Face transformers: ``OlmoForCausalLM`` (OLMo-1 layout) and ``Olmo2ForCausalLM`` (OLMo-2).

What each Hugging Face architecture computes (transformers' modeling_olmo.py / modeling_olmo2.py):

- both: token embedding, separate q/k/v projections (our fused ``att_proj`` is split), RoPE with the NeoX
  half rotation (``rotate_half``, like ours), GQA, a gated MLP ``down(silu(gate(x)) * up(x))`` without biases
  (our SwiGLU's ``ff_proj`` holds [up; gate] in that order: x, gate = chunk(2)), final norm, LM head (tied or not);
  ``attention_bias`` would add biases to q/k/v/o only, so ``include_bias`` (which also biases the MLP) never maps.
- ``olmo``: pre-norm blocks; every norm is a LayerNorm **without** weight or bias, eps 1e-5; clip_qkv clamps q, k
  and v (the same as clamping the fused projection).
- ``olmo2``: post-norm inside the residual (our ``norm_after``): ``h = x + norm(attn(x))``,
  ``out = h + norm(mlp(h))``; RMSNorm with a weight (eps ``rms_norm_eps``); QK-norm is always on and normalises
  the whole q and k projections before the head split (like ours); no clip_qkv.

Everything else (ALiBi, learned or no positions, the parallel block, GELU/ReLU MLPs, norm biases, embedding
norm, scaled logits, ...) has no counterpart and raises an ``OLMoConfigurationError`` naming the option.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from olmo.config import ModelConfig
from olmo.errors import OLMoConfigurationError
from olmo.interop.olmo_layout import flatten_block_groups

ARCHS = ("olmo", "olmo2")
HF_CLASSES = {"olmo": "OlmoForCausalLM", "olmo2": "Olmo2ForCausalLM"}


def hf_arch(config: ModelConfig) -> str:
    """The Hugging Face architecture closest to the config: OLMo-2 for post-norm or RMSNorm models."""
    return "olmo2" if config.norm_after or config.layer_norm_type == "rms" else "olmo"


def hf_incompatibilities(config: ModelConfig, arch: str) -> list[str]:
    """Every option of ``config`` the Hugging Face ``arch`` cannot represent, one line each (empty: it can)."""
    if arch not in ARCHS:
        raise OLMoConfigurationError(f"arch={arch!r} is invalid; allowed: 'auto', 'olmo', 'olmo2'")
    c, name = config, HF_CLASSES[arch]
    problems = []

    def need(ok: bool, option: str, why: str) -> None:
        if not ok:
            problems.append(f"{option} cannot be exported to Hugging Face {name}: {why}")

    need(c.effective_positional == "rope", f"positional={c.effective_positional!r}", "it supports RoPE only")
    need(c.block_type in ("sequential", "llama"), f"block_type={c.block_type!r}", "it has sequential blocks only")
    need(c.activation_type == "swiglu", f"activation_type={c.activation_type!r}",
         "its MLP is gated (silu(gate) * up); only 'swiglu' maps onto it")
    need(not c.include_bias, "include_bias=True", "its MLP and LM head have no biases")
    need(not c.embedding_layer_norm, "embedding_layer_norm=True", "it has no embedding norm")
    need(not c.scale_logits, "scale_logits=True", "it does not scale the logits")
    if arch == "olmo":
        need(c.layer_norm_type in ("default", "low_precision"), f"layer_norm_type={c.layer_norm_type!r}",
             "its norms are LayerNorms (use Olmo2ForCausalLM for RMSNorm with norm_after)")
        need(not c.layer_norm_with_affine, "layer_norm_with_affine=True",
             "its LayerNorms have no weight or bias")
        need(c.layer_norm_eps == 1e-5, f"layer_norm_eps={c.layer_norm_eps}", "its LayerNorm eps is fixed at 1e-5")
        need(not c.attention_layer_norm, "attention_layer_norm=True (QK-norm)", "it has no QK-norm (Olmo2 has)")
        need(not c.norm_after, "norm_after=True", "its blocks are pre-norm (Olmo2 is post-norm)")
    else:
        need(c.layer_norm_type == "rms", f"layer_norm_type={c.layer_norm_type!r}", "its norms are RMSNorms")
        need(c.norm_after, "norm_after=False", "its blocks norm the sub-layer outputs (norm_after=True)")
        need(c.attention_layer_norm, "attention_layer_norm=False", "its attention always has QK-norm")
        need(not c.effective_bias_for_layer_norm, "bias_for_layer_norm=True", "its RMSNorms have no bias")
        need(c.clip_qkv is None, f"clip_qkv={c.clip_qkv}", "it does not clip q, k and v")
    return problems


def check_hf_compatible(config: ModelConfig, arch: str = "auto") -> str:
    """Return the architecture to export to; raise naming the first option it cannot represent."""
    arch = hf_arch(config) if arch == "auto" else arch
    problems = hf_incompatibilities(config, arch)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise OLMoConfigurationError(problems[0] + more)
    return arch


def hf_config(config: ModelConfig, arch: str = "auto") -> Any:
    """The transformers ``OlmoConfig`` / ``Olmo2Config`` of an exportable model config."""
    import transformers

    arch = check_hf_compatible(config, arch)
    c = config
    kwargs: dict[str, Any] = dict(
        vocab_size=c.padded_embedding_size,  # the logits have embedding_size columns, as ours
        hidden_size=c.d_model,
        intermediate_size=c.mlp_width // 2,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.effective_n_kv_heads,
        hidden_act="silu",
        max_position_embeddings=c.max_sequence_length,
        attention_bias=False,
        attention_dropout=c.attention_dropout,
        tie_word_embeddings=c.weight_tying,
        # HF makes pad_token_id the embedding's padding_idx (a row that never trains): ours pads with EOS by default,
        # whose row must train, so a pad id equal to EOS (or outside the table) is left out of the model config.
        pad_token_id=c.pad_token_id if c.pad_token_id != c.eos_token_id and c.pad_token_id < c.padded_embedding_size
        else None,
        eos_token_id=c.eos_token_id if c.eos_token_id < c.padded_embedding_size else None,
        bos_token_id=None,
    )
    if int(transformers.__version__.split(".")[0]) >= 5:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": float(c.rope_theta)}
    else:
        kwargs["rope_theta"] = float(c.rope_theta)
    if arch == "olmo":
        kwargs["clip_qkv"] = c.clip_qkv
        return transformers.OlmoConfig(**kwargs)
    kwargs["rms_norm_eps"] = c.layer_norm_eps
    return transformers.Olmo2Config(**kwargs)


def hf_state_dict(
    state_dict: dict[str, torch.Tensor], config: ModelConfig, arch: str = "auto"
) -> dict[str, torch.Tensor]:
    """Our (OLMo-named) state dict -> the Hugging Face model's (``model.layers.N.self_attn.q_proj.weight``, ...)."""
    arch = check_hf_compatible(config, arch)
    c = config
    sd = flatten_block_groups(state_dict)
    d, kv = c.d_model, c.effective_n_kv_heads * c.head_dim
    hidden = c.mlp_width // 2
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": sd["transformer.wte.weight"]}
    for i in range(c.n_layers):
        ours, theirs = f"transformer.blocks.{i}.", f"model.layers.{i}."
        if c.block_type == "llama":
            q, k, v = (sd[ours + f"{n}_proj.weight"] for n in "qkv")
        else:
            q, k, v = sd[ours + "att_proj.weight"].split((d, kv, kv), dim=0)
        out[theirs + "self_attn.q_proj.weight"] = q
        out[theirs + "self_attn.k_proj.weight"] = k
        out[theirs + "self_attn.v_proj.weight"] = v
        out[theirs + "self_attn.o_proj.weight"] = sd[ours + "attn_out.weight"]
        up, gate = sd[ours + "ff_proj.weight"].split((hidden, hidden), dim=0)
        out[theirs + "mlp.gate_proj.weight"] = gate
        out[theirs + "mlp.up_proj.weight"] = up
        out[theirs + "mlp.down_proj.weight"] = sd[ours + "ff_out.weight"]
        if arch == "olmo2":  # non-affine norms of ours become RMSNorms with unit weights
            norms = {"attn_norm": ("post_attention_layernorm", d), "ff_norm": ("post_feedforward_layernorm", d),
                     "q_norm": ("self_attn.q_norm", d), "k_norm": ("self_attn.k_norm", kv)}
            for name, (hf_name, size) in norms.items():
                out[theirs + hf_name + ".weight"] = sd.get(ours + name + ".weight", torch.ones(size))
    if arch == "olmo2":
        out["model.norm.weight"] = sd.get("transformer.ln_f.weight", torch.ones(d))
    out["lm_head.weight"] = sd["transformer.wte.weight"] if c.weight_tying else sd["transformer.ff_out.weight"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def to_hf(model: torch.nn.Module, arch: str = "auto", config: ModelConfig | None = None) -> Any:
    """A transformers ``OlmoForCausalLM`` / ``Olmo2ForCausalLM`` (fp32, eval mode) with the weights of ``model``."""
    import transformers

    config = config or model.config
    hf_cfg = hf_config(config, arch)
    hf_model = getattr(transformers, HF_CLASSES[hf_cfg.model_type])(hf_cfg)
    state = hf_state_dict(model.state_dict(), config, hf_cfg.model_type)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    # A tied LM head is the embedding itself; nothing else may be left out.
    missing = [k for k in missing if not (config.weight_tying and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"Hugging Face export: missing {missing}, unexpected {unexpected}")
    return hf_model.float().eval()


def save_hf(
    model: torch.nn.Module, folder: str | os.PathLike, arch: str = "auto", tokenizer_file: str | None = None
) -> Path:
    """``save_pretrained`` of the exported model into ``folder`` (plus the tokenizer.json when given)."""
    import shutil

    folder = Path(folder)
    hf_model = to_hf(model, arch)
    hf_model.save_pretrained(folder)
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, folder / "tokenizer.json")
    return folder
