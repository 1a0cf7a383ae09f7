"""Checkpoints in the original OLMo layout (allenai/OLMo): its model config keys and its state-dict names.

Our parameter names already follow the original's (``transformer.wte``, ``transformer.blocks.N.att_proj`` with the
fused q/k/v, ``attn_out``, ``ff_proj`` with SwiGLU's [up; gate] halves in the same order, ``ff_out``,
``attn_norm``, ``ff_norm``, ``q_norm``/``k_norm``, ``transformer.ln_f``, ``transformer.ff_out``, ``wpe``,
``emb_norm``; ``transformer.block_groups.{i}.{j}`` with block groups), so the work is:

- config: the original ``ModelConfig`` (a dict, or the ``model:`` section of its config.yaml) <-> ours, with the
  original's defaults for missing keys (``embedding_size`` 50304) and rules (``multi_query_attention``,
  ``flash_attention``); an unknown key fails naming it;
- state dict: what the original's ``_make_state_dict_compatible`` accepts: ``_fsdp_wrapped_module.`` prefixes,
  a legacy single ``norm`` per block (duplicated into ``attn_norm`` and ``ff_norm``), and any saved block grouping
  (flattened, then regrouped to the config's ``block_group_size``).

An original unsharded checkpoint folder holds ``config.yaml`` and ``model.pt`` (or ``model.safetensors``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from olmo.config import ModelConfig
from olmo.errors import OLMoConfigurationError, bad_value

# The original ModelConfig's fields (v0.6 and later HEAD) and its defaults where they differ from ours.
OLMO_MODEL_KEYS = (
    "d_model", "n_heads", "n_kv_heads", "clip_qkv", "n_layers", "mlp_ratio", "mlp_hidden_size", "activation_type",
    "block_type", "block_group_size", "alibi", "alibi_bias_max", "rope", "rope_full_precision", "rope_theta",
    "flash_attention", "attention_dropout", "multi_query_attention", "attention_layer_norm", "residual_dropout",
    "embedding_dropout", "embedding_layer_norm", "layer_norm_type", "layer_norm_with_affine", "layer_norm_eps",
    "attention_layer_norm_with_affine", "max_sequence_length", "include_bias", "bias_for_layer_norm",
    "scale_logits", "vocab_size", "embedding_size", "weight_tying", "eos_token_id", "pad_token_id",
    "init_device", "init_fn", "init_std", "init_cutoff_factor", "precision", "scale_emb_init", "emb_init_std",
    "norm_after",
)
OLMO_DEFAULTS: dict[str, Any] = {"embedding_size": 50304, "multi_query_attention": None}
_NOT_MODEL = ("flash_attention", "precision", "multi_query_attention", "n_kv_heads")

WEIGHT_FILES = ("model.safetensors", "model.pt")
CONFIG_FILE = "config.yaml"


# ----- config ------------------------------------------------------------------------------------------
def config_from_olmo(olmo_config: dict[str, Any] | str | os.PathLike) -> ModelConfig:
    """The original's model config (a dict, a ``model:`` section, or a config.yaml path) -> our ModelConfig."""
    d = _read_config(olmo_config)
    unknown = sorted(set(d) - set(OLMO_MODEL_KEYS))
    if unknown:
        raise bad_value(f"model.{unknown[0]}", d[unknown[0]], "a key of the original OLMo ModelConfig")
    d = {**OLMO_DEFAULTS, **d}
    ours = {k: v for k, v in d.items() if k not in _NOT_MODEL}
    if ours.get("embedding_size") is None:  # the original's None means "exactly vocab_size"
        ours["embedding_size"] = d.get("vocab_size", ModelConfig.vocab_size)
    if "rope_theta" in ours:
        ours["rope_theta"] = float(ours["rope_theta"])
    ours["n_kv_heads"] = _olmo_n_kv_heads(d)
    if d.get("flash_attention"):
        from olmo.nn.attention import flash_attn_available

        # Like the original, flash attention is used when the package (and a GPU) is there, silently not otherwise.
        ours["attention_backend"] = "flash_attn" if flash_attn_available() else "sdpa"
    ours["init_device"] = None
    return ModelConfig(**ours)


def _read_config(olmo_config: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    if isinstance(olmo_config, (str, os.PathLike)):
        path = Path(olmo_config)
        if path.is_dir():
            path = path / CONFIG_FILE
        if not path.is_file():
            raise bad_value("olmo_config", str(path), "an original OLMo config.yaml")
        olmo_config = yaml.safe_load(path.read_text()) or {}
    d = dict(olmo_config)
    if "model" in d and isinstance(d["model"], dict):  # a whole TrainConfig
        d = dict(d["model"])
    return d


def _olmo_n_kv_heads(d: dict[str, Any]) -> int:
    """The original's ``effective_n_kv_heads`` (and its llama block, which honours only multi_query_attention)."""
    n_heads = d.get("n_heads", ModelConfig.n_heads)
    n_kv, mqa = d.get("n_kv_heads"), d.get("multi_query_attention")
    if n_kv is None:
        n_kv = 1 if mqa else n_heads
    elif mqa is not None and n_kv != (1 if mqa else n_heads):
        raise OLMoConfigurationError(
            f"n_kv_heads={n_kv} contradicts multi_query_attention={mqa} (the original OLMo refuses it too)"
        )
    if d.get("block_type") == "llama" and n_kv != (1 if mqa else n_heads):
        raise bad_value(
            "n_kv_heads", n_kv,
            "n_heads, or multi_query_attention=True, with block_type='llama' (the original's llama block ignores "
            "n_kv_heads: its k/v width is d_model, or d_model/n_heads with multi_query_attention)",
        )
    return n_kv


def config_to_olmo(config: ModelConfig) -> dict[str, Any]:
    """Our ModelConfig -> the original's model config dict; raises for what the original cannot express."""
    c = config
    if c.block_type == "parallel":
        raise bad_value("block_type", c.block_type, "'sequential' or 'llama' (the original OLMo has no parallel block)")
    if c.effective_positional == "none":
        raise bad_value(
            "positional", "none", "'rope', 'alibi' or 'learned' (the original OLMo has no position-free models)"
        )
    kv = c.effective_n_kv_heads
    if c.block_type == "llama" and kv not in (1, c.n_heads):
        raise bad_value(
            "n_kv_heads", kv, f"1 or n_heads={c.n_heads} with block_type='llama' (the original's llama block has "
            "no grouped-query attention)",
        )
    d = {k: getattr(c, k) for k in OLMO_MODEL_KEYS if k not in _NOT_MODEL}
    d["rope"] = c.effective_positional == "rope"
    d["alibi"] = c.effective_positional == "alibi"
    d["rope_theta"] = int(c.rope_theta) if float(c.rope_theta).is_integer() else c.rope_theta
    d["embedding_size"] = c.padded_embedding_size
    d["flash_attention"] = c.attention_backend == "flash_attn"
    if c.block_type == "llama":
        d["multi_query_attention"] = kv == 1 and c.n_heads > 1
        d["n_kv_heads"] = None
    else:
        d["multi_query_attention"] = None
        d["n_kv_heads"] = kv
    d["init_device"] = None
    d["precision"] = None
    return d


# ----- state dict --------------------------------------------------------------------------------------
_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_GROUPED = re.compile(r"^transformer\.block_groups\.(\d+)\.(\d+)\.(.*)$")
_BLOCK = re.compile(r"^transformer\.blocks\.(\d+)\.(.*)$")


def flatten_block_groups(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``transformer.block_groups.{i}.{j}.*`` -> ``transformer.blocks.{i*g+j}.*`` (g detected from the keys)."""
    groups: dict[int, int] = {}
    for key in state_dict:
        m = _GROUPED.match(key)
        if m:
            groups[int(m.group(1))] = max(groups.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    if not groups:
        return dict(state_dict)
    g = max(groups.values())
    out = {}
    for key, value in state_dict.items():
        m = _GROUPED.match(key)
        out[f"transformer.blocks.{int(m.group(1)) * g + int(m.group(2))}.{m.group(3)}" if m else key] = value
    return out


def group_blocks(state_dict: dict[str, torch.Tensor], block_group_size: int) -> dict[str, torch.Tensor]:
    """``transformer.blocks.{i}.*`` -> ``transformer.block_groups.{i//g}.{i%g}.*`` (identity for g = 1)."""
    if block_group_size == 1:
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        m = _BLOCK.match(key)
        if m:
            i = int(m.group(1))
            key = f"transformer.block_groups.{i // block_group_size}.{i % block_group_size}.{m.group(2)}"
        out[key] = value
    return out


def state_dict_from_olmo(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """An original OLMo state dict (any wrapping, grouping, legacy norms) -> ours for ``config``.

    Also the early original's parallel block: its ``fused_attn_ff_proj`` (q, k, v and the MLP input in one
    projection) becomes our parallel block's ``att_proj`` and ``ff_proj``; its single ``norm`` our ``attn_norm``.
    """
    sd = {}
    for key, value in state_dict.items():
        for wrapper in _WRAPPERS:
            key = key.replace(wrapper, "")
        sd[key] = value
    sd = flatten_block_groups(sd)
    one_norm = config.block_type == "parallel" and not config.norm_after  # our pre-norm parallel block
    qkv_width = config.d_model + 2 * config.effective_n_kv_heads * config.head_dim
    for key in [k for k in sd if _BLOCK.match(k)]:
        prefix, name, kind = key.rsplit(".", 2)
        if name == "norm" and f"{prefix}.attn_norm.{kind}" not in sd:  # legacy: one norm for both sub-layers
            value = sd.pop(key)
            sd[f"{prefix}.attn_norm.{kind}"] = value
            if not one_norm:
                sd[f"{prefix}.ff_norm.{kind}"] = value.clone()
        elif name == "fused_attn_ff_proj":
            att, ff = sd.pop(key).split((qkv_width, config.mlp_width), dim=0)
            sd[f"{prefix}.att_proj.{kind}"] = att
            sd[f"{prefix}.ff_proj.{kind}"] = ff
    return group_blocks(sd, config.block_group_size)


def state_dict_to_olmo(state_dict: dict[str, torch.Tensor], block_group_size: int = 1) -> dict[str, torch.Tensor]:
    """Our state dict -> the original's names, grouped by ``block_group_size``."""
    return group_blocks(flatten_block_groups(state_dict), block_group_size)


# ----- checkpoint folders ------------------------------------------------------------------------------
def load_olmo_checkpoint(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """Build our OLMo from an original unsharded checkpoint folder (config.yaml + model.safetensors/model.pt)."""
    from olmo.nn.model import OLMo

    folder = Path(folder)
    config = config_from_olmo(folder / CONFIG_FILE)
    state = read_weights(folder)
    model = OLMo(config, device=device)
    model.load_state_dict(state_dict_from_olmo(state, config))
    return model


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
    raise bad_value("checkpoint", str(folder), f"a folder holding one of {', '.join(WEIGHT_FILES)}")


def save_olmo_checkpoint(
    model: torch.nn.Module,
    folder: str | os.PathLike,
    config: ModelConfig | None = None,
    block_group_size: int | None = None,
    safetensors: bool = False,
) -> Path:
    """Write ``model`` as an original unsharded checkpoint: config.yaml (``model:`` section) + model.pt."""
    config = config or model.config
    olmo_config = config_to_olmo(config)
    g = config.block_group_size if block_group_size is None else block_group_size
    olmo_config["block_group_size"] = g
    state = state_dict_to_olmo({k: v.detach().cpu() for k, v in model.state_dict().items()}, g)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump({"model": olmo_config}, sort_keys=False))
    if safetensors:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    else:
        torch.save(state, folder / "model.pt")
    return folder
