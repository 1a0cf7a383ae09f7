"""Inconsistent model configs fail at construction with one line: the field, the value, what is allowed."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch
from model_helpers import tiny_config

from olmo import OLMo, OLMoConfigurationError
from olmo.nn.axes import AXES


def config_error(**overrides) -> str:
    with pytest.raises(OLMoConfigurationError) as info:
        tiny_config(**overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(d_model=30), "d_model=30 is invalid; allowed: a multiple of n_heads=4"),
        (dict(n_kv_heads=3), "n_kv_heads=3 is invalid; allowed: a divisor of n_heads=4 (or None)"),
        (dict(n_kv_heads=0), "n_kv_heads=0 is invalid; allowed: a divisor of n_heads=4 (or None)"),
        (
            dict(positional=None, rope=True, alibi=True),
            "rope=True and alibi=True: two positional schemes at once; set only one of them, or set positional instead",
        ),
        (
            dict(positional="rope", alibi=True),
            "positional='rope' and alibi=True: two positional schemes at once; set only positional",
        ),
        (
            dict(positional="alibi", attention_backend="flash_attn"),
            "positional='alibi' cannot run with attention_backend='flash_attn' (the kernel takes no additive "
            "bias); use attention_backend 'sdpa' or 'eager'",
        ),
        (
            dict(positional=None, alibi=True, attention_backend="flash_attn"),
            "positional='alibi' cannot run with attention_backend='flash_attn' (the kernel takes no additive "
            "bias); use attention_backend 'sdpa' or 'eager'",
        ),
        (
            dict(n_layers=4, block_group_size=3),
            "block_group_size=3 is invalid; allowed: a positive divisor of n_layers=4",
        ),
        (dict(block_group_size=0), "block_group_size=0 is invalid; allowed: a positive divisor of n_layers=2"),
        (dict(embedding_size=64), "embedding_size=64 is invalid; allowed: None or at least vocab_size=100"),
        (
            dict(n_kv_heads=2, multi_query_attention=True),
            "n_kv_heads=2 contradicts multi_query_attention=True; set only one of them",
        ),
        (
            dict(d_model=12, n_heads=4, positional="rope"),
            "d_model=12 is invalid; allowed: an even head dimension (d_model/n_heads) with RoPE",
        ),
        (
            dict(activation_type="swiglu", mlp_hidden_size=33),
            "mlp_hidden_size=33 is invalid; allowed: an even width with activation_type='swiglu'",
        ),
        (dict(residual_dropout=1.0), "residual_dropout=1.0 is invalid; allowed: a probability in [0, 1)"),
        (dict(clip_qkv=0.0), "clip_qkv=0.0 is invalid; allowed: None or a positive number"),
        (dict(n_heads=0), "n_heads=0 is invalid; allowed: a positive integer"),
    ],
    ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else "",
)
def test_inconsistent_config_fails_with_one_clear_line(overrides, message):
    assert config_error(**overrides) == message


KNOWN = {
    "attention_backend": {"sdpa", "eager", "flash_attn"},
    "positional": {"rope", "alibi", "learned", "none"},
    "layer_norm_type": {"default", "rms", "low_precision"},
    "activation_type": {"gelu", "relu", "swiglu"},
    "init_fn": {"normal", "mitchell", "full_megatron", "kaiming_normal", "fan_in"},
    "block_type": {"sequential", "llama", "parallel"},
}


def test_every_axis_is_a_registry():
    assert set(AXES) == set(KNOWN)
    for field, registry in AXES.items():
        assert registry.field == field
        assert KNOWN[field] <= set(registry.names())


@pytest.mark.parametrize("field", sorted(KNOWN))
def test_unknown_axis_value_lists_the_known_ones(field):
    message = config_error(**{field: "nope"})
    match = re.fullmatch(rf"{field}='nope' is invalid; allowed: (.*)", message)
    assert match, message
    assert {name.strip("'") for name in match.group(1).split(", ")} == set(AXES[field].names())


def test_embedding_size_not_a_multiple_of_128_warns():
    with pytest.warns(UserWarning, match="embedding_size=200 is not a multiple of 128"):
        tiny_config(embedding_size=200)


def test_model_construction_revalidates_the_config():
    config = tiny_config()
    config.n_kv_heads = 3  # mutated after construction
    with pytest.raises(OLMoConfigurationError, match=r"^n_kv_heads=3 is invalid"):
        OLMo(config)


def test_replace_validates():
    with pytest.raises(OLMoConfigurationError, match=r"^block_type='nope' is invalid"):
        tiny_config().replace(block_type="nope")


@pytest.mark.skipif(
    importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available(),
    reason="flash-attn can run here",
)
def test_flash_attn_without_the_package_or_a_gpu_fails_at_model_construction():
    config = tiny_config(attention_backend="flash_attn")  # a valid config: it may be run elsewhere
    with pytest.raises(OLMoConfigurationError) as info:
        OLMo(config)
    message = str(info.value)
    assert "\n" not in message
    if importlib.util.find_spec("flash_attn") is None:
        assert message == (
            "attention_backend='flash_attn' needs the flash-attn package, which is not installed "
            "(pip install 'olmo-sweeps[gpu]' on a CUDA machine); allowed here: 'sdpa', 'eager'"
        )
    else:
        assert message.startswith("attention_backend='flash_attn' needs a CUDA GPU")
