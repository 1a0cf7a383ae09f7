"""The original OLMo checkpoint layout: config mapping, state-dict normalisation, round trips with equal logits."""

from __future__ import annotations

import pytest
import torch
import yaml

from olmo import ModelConfig, OLMo
from olmo.errors import OLMoConfigurationError
from olmo.interop import (
    config_from_olmo,
    config_to_olmo,
    load_olmo_checkpoint,
    save_olmo_checkpoint,
    state_dict_from_olmo,
    state_dict_to_olmo,
)
from olmo.interop.olmo_layout import OLMO_MODEL_KEYS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# An original-style model section: OLMo's names and conventions (rope flag, int theta, MQA flag, flash flag).
OLMO_TINY = dict(
    d_model=32, n_heads=4, n_layers=4, mlp_ratio=4, max_sequence_length=32, vocab_size=100, embedding_size=128,
    rope=True, rope_theta=10000, flash_attention=False, multi_query_attention=None, include_bias=False,
    attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0, weight_tying=False, eos_token_id=0,
    pad_token_id=1, init_device="cpu", precision="amp_bf16",
)


def randomise(model: OLMo, seed: int = 0) -> OLMo:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # norms away from 1/0 too, so every tensor matters
    return model.eval()


def logits(model: OLMo) -> torch.Tensor:
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(ids).logits


# ----- config -------------------------------------------------------------------------------------------
def test_config_from_olmo_maps_flags_and_defaults():
    c = config_from_olmo(OLMO_TINY)
    assert c.effective_positional == "rope" and c.rope_theta == 10000.0
    assert c.attention_backend == "sdpa" and c.init_device is None
    assert c.embedding_size == 128 and c.n_kv_heads == 4
    assert config_from_olmo({**OLMO_TINY, "rope": False, "alibi": True}).effective_positional == "alibi"
    assert config_from_olmo({**OLMO_TINY, "rope": False}).effective_positional == "learned"
    assert config_from_olmo({**OLMO_TINY, "multi_query_attention": True}).effective_n_kv_heads == 1
    assert config_from_olmo({**OLMO_TINY, "n_kv_heads": 2}).effective_n_kv_heads == 2
    # The original's defaults where ours differ: embedding_size 50304; its None means exactly vocab_size.
    missing = {k: v for k, v in OLMO_TINY.items() if k != "embedding_size"}
    assert config_from_olmo(missing).embedding_size == 50304
    with pytest.warns(UserWarning, match="multiple of 128"):  # as the original warns
        assert config_from_olmo({**OLMO_TINY, "embedding_size": None}).embedding_size == 100
    # flash_attention=True falls back to SDPA without flash-attn (as the original does, silently).
    from olmo.nn.attention import flash_attn_available

    expected = "flash_attn" if flash_attn_available() else "sdpa"
    assert config_from_olmo({**OLMO_TINY, "flash_attention": True}).attention_backend == expected


def test_config_from_a_train_config_yaml(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"run_name": "x", "model": OLMO_TINY, "seed": 6198}))
    assert config_from_olmo(tmp_path) == config_from_olmo(OLMO_TINY)
    assert config_from_olmo(tmp_path / "config.yaml") == config_from_olmo(OLMO_TINY)


def test_config_from_olmo_errors_clearly():
    with pytest.raises(OLMoConfigurationError, match=r"model\.rope_type.*original OLMo ModelConfig"):
        config_from_olmo({**OLMO_TINY, "rope_type": "yarn"})
    with pytest.raises(OLMoConfigurationError, match="contradicts multi_query_attention"):
        config_from_olmo({**OLMO_TINY, "n_kv_heads": 2, "multi_query_attention": True})
    with pytest.raises(OLMoConfigurationError, match="llama"):
        config_from_olmo({**OLMO_TINY, "block_type": "llama", "n_kv_heads": 2})
    with pytest.raises(OLMoConfigurationError, match="rope=True and alibi=True"):
        config_from_olmo({**OLMO_TINY, "alibi": True})
    with pytest.raises(OLMoConfigurationError, match="layer_norm_type"):
        config_from_olmo({**OLMO_TINY, "layer_norm_type": "amd_compatible"})


def test_config_to_olmo_uses_only_original_keys_and_round_trips():
    for ours in (
        config_from_olmo(OLMO_TINY),
        ModelConfig(d_model=32, n_heads=4, n_layers=2, positional="alibi", n_kv_heads=2, vocab_size=100),
        ModelConfig(d_model=32, n_heads=4, n_layers=2, positional="learned", block_type="llama", n_kv_heads=1),
    ):
        d = config_to_olmo(ours)
        assert set(d) == set(OLMO_MODEL_KEYS)
        pos = ours.effective_positional  # the original spells the scheme with its rope/alibi flags
        assert config_from_olmo(d) == ours.replace(
            embedding_size=ours.padded_embedding_size, positional=None, rope=pos == "rope", alibi=pos == "alibi"
        )


def test_config_to_olmo_refuses_what_the_original_cannot_express():
    base = dict(d_model=32, n_heads=4, n_layers=2)
    with pytest.raises(OLMoConfigurationError, match="parallel"):
        config_to_olmo(ModelConfig(**base, block_type="parallel"))
    with pytest.raises(OLMoConfigurationError, match="positional"):
        config_to_olmo(ModelConfig(**base, positional="none"))
    with pytest.raises(OLMoConfigurationError, match="llama"):
        config_to_olmo(ModelConfig(**base, block_type="llama", n_kv_heads=2))


# ----- state dicts and folders --------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    dict(), dict(block_group_size=2), dict(rope=False, alibi=True, n_kv_heads=2),
    dict(rope=False, block_type="llama", multi_query_attention=True, include_bias=True),
    dict(attention_layer_norm=True, layer_norm_type="rms", norm_after=True, clip_qkv=2.0, weight_tying=True),
], ids=["rope", "groups", "alibi-gqa", "llama-mqa-learned", "olmo2"])
@pytest.mark.parametrize("safetensors", [False, True], ids=["pt", "safetensors"])
def test_round_trip_through_the_original_layout(tmp_path, overrides, safetensors):
    model = randomise(OLMo(config_from_olmo({**OLMO_TINY, **overrides})))
    folder = save_olmo_checkpoint(model, tmp_path / "ckpt", safetensors=safetensors)
    saved = yaml.safe_load((folder / "config.yaml").read_text())["model"]
    assert saved["rope"] == overrides.get("rope", True) and isinstance(saved["rope_theta"], int)
    loaded = load_olmo_checkpoint(folder)
    assert loaded.config == model.config
    assert torch.equal(logits(loaded), logits(model))


def test_export_regroups_blocks_on_request(tmp_path):
    model = randomise(OLMo(config_from_olmo(OLMO_TINY)))  # block_group_size 1
    folder = save_olmo_checkpoint(model, tmp_path / "g2", block_group_size=2)
    keys = set(torch.load(folder / "model.pt", weights_only=True))
    assert "transformer.block_groups.1.1.att_proj.weight" in keys
    assert not any(k.startswith("transformer.blocks.") for k in keys)
    assert yaml.safe_load((folder / "config.yaml").read_text())["model"]["block_group_size"] == 2
    loaded = load_olmo_checkpoint(folder)  # a grouped model of ours
    assert loaded.config.block_group_size == 2
    assert torch.equal(logits(loaded), logits(model))


def test_legacy_fsdp_grouped_checkpoint_with_single_norms(tmp_path):
    """What the original's _make_state_dict_compatible accepts: FSDP prefixes, one `norm` per block, groups."""
    config = config_from_olmo({**OLMO_TINY, "include_bias": True})
    reference = randomise(OLMo(config))
    with torch.no_grad():  # the legacy block had one norm for both sub-layers
        for block in reference.blocks:
            block.ff_norm.weight.copy_(block.attn_norm.weight)
            block.ff_norm.bias.copy_(block.attn_norm.bias)
    legacy = {}
    for key, value in state_dict_to_olmo(reference.state_dict(), block_group_size=2).items():
        if ".ff_norm." in key:
            continue
        key = key.replace(".attn_norm.", ".norm.")
        if key.startswith("transformer.block_groups."):  # FSDP wrapped each block group...
            parts = key.split(".")
            key = ".".join(parts[:4]) + "._fsdp_wrapped_module." + ".".join(parts[4:])
        legacy["_fsdp_wrapped_module." + key] = value  # ... and the whole model
    assert any(".norm.weight" in k for k in legacy) and any("block_groups.1.1" in k for k in legacy)

    converted = state_dict_from_olmo(legacy, config)
    assert set(converted) == set(reference.state_dict())
    model = OLMo(config)
    model.load_state_dict(converted)
    assert torch.equal(logits(model.eval()), logits(reference))

    folder = tmp_path / "legacy"
    folder.mkdir()
    torch.save(legacy, folder / "model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {**OLMO_TINY, "include_bias": True}}))
    assert torch.equal(logits(load_olmo_checkpoint(folder)), logits(reference))


def test_loading_into_a_grouped_config_regroups(tmp_path):
    flat = randomise(OLMo(config_from_olmo(OLMO_TINY)))
    grouped_config = config_from_olmo({**OLMO_TINY, "block_group_size": 4})
    sd = state_dict_from_olmo(flat.state_dict(), grouped_config)
    assert "transformer.block_groups.0.3.ff_out.weight" in sd
    grouped = OLMo(grouped_config)
    grouped.load_state_dict(sd)
    assert torch.equal(logits(grouped.eval()), logits(flat))


def test_missing_weights_error_clearly(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": OLMO_TINY}))
    with pytest.raises(OLMoConfigurationError, match="model.safetensors, model.pt"):
        load_olmo_checkpoint(tmp_path)


def test_early_parallel_block_with_fused_projection():
    """The early original's parallel block: fused_attn_ff_proj = [q; k; v; ff] and one `norm`."""
    config = config_from_olmo({**OLMO_TINY, "block_type": "parallel", "include_bias": True, "n_kv_heads": 2})
    reference = randomise(OLMo(config))
    legacy = {}
    for key, value in reference.state_dict().items():
        if ".att_proj." in key:
            ff = reference.state_dict()[key.replace(".att_proj.", ".ff_proj.")]
            legacy[key.replace(".att_proj.", ".fused_attn_ff_proj.")] = torch.cat([value, ff])
        elif ".ff_proj." not in key:
            legacy[key.replace(".attn_norm.", ".norm.")] = value
    model = OLMo(config)
    model.load_state_dict(state_dict_from_olmo(legacy, config))
    assert torch.equal(logits(model.eval()), logits(reference))
