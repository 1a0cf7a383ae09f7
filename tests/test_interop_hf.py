"""Export to Hugging Face transformers (OlmoForCausalLM, Olmo2ForCausalLM): logits parity, clear refusals."""

from __future__ import annotations

import pytest
import torch

from olmo import ModelConfig, OLMo
from olmo.errors import OLMoConfigurationError
from olmo.interop import check_hf_compatible, hf_arch, save_hf, to_hf

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = dict(
    d_model=64, n_heads=4, n_layers=2, mlp_ratio=4, vocab_size=250, max_sequence_length=64, positional="rope",
    include_bias=False, attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0, eos_token_id=0,
    pad_token_id=1, rope_theta=500000.0,
)
OLMO1 = dict(BASE, layer_norm_type="default", layer_norm_with_affine=False)
OLMO2 = dict(BASE, layer_norm_type="rms", norm_after=True, attention_layer_norm=True, layer_norm_eps=1e-6)


def build(seed: int = 0, **fields) -> OLMo:
    torch.manual_seed(seed)
    model = OLMo(ModelConfig(**fields)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # norm weights away from 1, so a dropped one would show
    return model


def assert_parity(model: OLMo, expected_class: str) -> None:
    hf = to_hf(model)
    assert type(hf).__name__ == expected_class
    ids = torch.randint(0, 250, (3, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = model(ids).logits
        theirs = hf(ids, attention_mask=mask).logits
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra", [
    dict(), dict(n_kv_heads=2), dict(n_kv_heads=1, weight_tying=False), dict(clip_qkv=0.3),
    dict(block_type="llama", n_kv_heads=2), dict(block_group_size=2), dict(layer_norm_type="low_precision"),
], ids=["mha", "gqa", "mqa-untied", "clip_qkv", "llama-gqa", "block-groups", "low-precision-norm"])
def test_olmo_parity(extra):
    assert_parity(build(**{**OLMO1, **extra}), "OlmoForCausalLM")


@pytest.mark.parametrize("extra", [
    dict(), dict(n_kv_heads=2, weight_tying=False), dict(block_type="llama", n_kv_heads=1),
    dict(layer_norm_with_affine=False, attention_layer_norm_with_affine=False), dict(mlp_hidden_size=96),
], ids=["mha", "gqa-untied", "llama-mqa", "non-affine-norms", "mlp-hidden-size"])
def test_olmo2_parity(extra):
    assert_parity(build(**{**OLMO2, **extra}), "Olmo2ForCausalLM")


def test_greedy_generation_matches_hugging_face():
    model = build(**OLMO2, seed=3)
    hf = to_hf(model)
    ids = torch.randint(2, 250, (2, 10), generator=torch.Generator().manual_seed(1))
    ours = model.generate(ids, max_steps=12, min_steps=12).token_ids[:, 0]
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                         do_sample=False, pad_token_id=1, eos_token_id=0)[:, ids.shape[1]:]
    assert torch.equal(ours, theirs)


def test_save_pretrained_folder_loads_back_with_transformers(tmp_path):
    model = build(**OLMO1, seed=5)
    tokenizer = tmp_path / "tok.json"
    tokenizer.write_text("{}")
    folder = save_hf(model, tmp_path / "hf", tokenizer_file=tokenizer)
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=0)


def test_architecture_choice():
    assert hf_arch(ModelConfig(**OLMO1)) == "olmo"
    assert hf_arch(ModelConfig(**OLMO2)) == "olmo2"
    assert check_hf_compatible(ModelConfig(**OLMO2), "auto") == "olmo2"


@pytest.mark.parametrize("base, change, option", [
    (OLMO1, dict(positional="alibi"), "positional='alibi'"),
    (OLMO1, dict(positional="learned"), "positional='learned'"),
    (OLMO2, dict(positional="none"), "positional='none'"),
    (OLMO1, dict(block_type="parallel"), "block_type='parallel'"),
    (OLMO1, dict(activation_type="gelu"), "activation_type='gelu'"),
    (OLMO2, dict(activation_type="relu"), "activation_type='relu'"),
    (OLMO1, dict(include_bias=True), "include_bias=True"),
    (OLMO1, dict(layer_norm_with_affine=True), "layer_norm_with_affine=True"),
    (OLMO1, dict(layer_norm_eps=1e-6), "layer_norm_eps"),
    (OLMO1, dict(attention_layer_norm=True), "attention_layer_norm=True"),
    (OLMO1, dict(embedding_layer_norm=True), "embedding_layer_norm=True"),
    (OLMO2, dict(scale_logits=True), "scale_logits=True"),
    (OLMO2, dict(clip_qkv=1.0), "clip_qkv=1.0"),
    (OLMO2, dict(attention_layer_norm=False), "attention_layer_norm=False"),
    (OLMO2, dict(bias_for_layer_norm=True), "bias_for_layer_norm=True"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_unrepresentable_options_error_naming_the_option(base, change, option):
    model = build(**{**base, **change})
    with pytest.raises(OLMoConfigurationError, match=f"^{option}.*cannot be exported to Hugging Face"):
        to_hf(model)


def test_forcing_the_other_architecture_names_what_differs():
    with pytest.raises(OLMoConfigurationError, match="layer_norm_type='rms'.*OlmoForCausalLM"):
        check_hf_compatible(ModelConfig(**OLMO2), "olmo")
    with pytest.raises(OLMoConfigurationError, match="layer_norm_type='default'.*Olmo2ForCausalLM"):
        check_hf_compatible(ModelConfig(**OLMO1), "olmo2")
    with pytest.raises(OLMoConfigurationError, match="arch='llama'"):
        check_hf_compatible(ModelConfig(**OLMO1), "llama")
