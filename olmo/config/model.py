"""ModelConfig: every architectural axis of the OLMo model as a config value.

Field names follow the original OLMo ``ModelConfig`` so that its configs and checkpoints map onto ours.
Deliberate differences are marked "Unlike OLMo".
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import warnings
from dataclasses import dataclass
from typing import Any

from olmo.errors import OLMoConfigurationError, bad_value


@dataclass
class ModelConfig:
    # Sizes
    d_model: int = 768
    n_heads: int = 12
    n_kv_heads: int | None = None  # None = MHA (n_heads), 1 = MQA, a divisor of n_heads = GQA
    multi_query_attention: bool | None = None  # OLMo's deprecated flag: True means n_kv_heads = 1
    n_layers: int = 12
    mlp_ratio: int = 4
    mlp_hidden_size: int | None = None  # width of ff_proj's output (SwiGLU splits it in two halves)
    max_sequence_length: int = 1024
    vocab_size: int = 50257
    # Unlike OLMo (default 50304): None pads vocab_size up to a multiple of 128.
    embedding_size: int | None = None

    # Axes (each a registry in olmo.nn; the value is the registry key)
    block_type: str = "sequential"  # sequential | llama | parallel
    block_group_size: int = 1
    activation_type: str = "swiglu"  # gelu | relu | swiglu
    layer_norm_type: str = "default"  # default | rms | low_precision
    attention_backend: str = "sdpa"  # sdpa | eager | flash_attn
    # Unlike OLMo, one field picks the positional scheme; None derives it from OLMo's rope/alibi flags.
    positional: str | None = None  # rope | alibi | learned | none
    rope: bool = False
    alibi: bool = False
    init_fn: str = "normal"  # normal | mitchell | full_megatron | kaiming_normal | fan_in

    # Positional details
    rope_theta: float = 10000.0
    rope_full_precision: bool = True
    alibi_bias_max: float = 8.0

    # Attention details
    clip_qkv: float | None = None
    attention_layer_norm: bool = False  # QK-norm
    attention_layer_norm_with_affine: bool = True

    # Norms
    layer_norm_with_affine: bool = True
    bias_for_layer_norm: bool | None = None  # None follows include_bias
    layer_norm_eps: float = 1e-5
    embedding_layer_norm: bool = False
    norm_after: bool = False  # OLMo-2 ordering: norm the sub-layer output before the residual add

    # Regularisation and heads
    attention_dropout: float = 0.1
    residual_dropout: float = 0.1
    embedding_dropout: float = 0.1
    include_bias: bool = True
    weight_tying: bool = True
    scale_logits: bool = False

    # Special tokens (generation)
    eos_token_id: int = 50256
    pad_token_id: int = 50256

    # Initialisation
    init_device: str | None = None  # "meta" skips initialisation (FSDP initialises later)
    init_std: float = 0.02
    init_cutoff_factor: float | None = None
    emb_init_std: float | None = None
    scale_emb_init: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ----- derived values -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def effective_n_kv_heads(self) -> int:
        if self.n_kv_heads is not None:
            return self.n_kv_heads
        return 1 if self.multi_query_attention else self.n_heads

    @property
    def effective_positional(self) -> str:
        if self.positional is not None:
            return self.positional
        if self.rope:
            return "rope"
        if self.alibi:
            return "alibi"
        return "learned"

    @property
    def padded_embedding_size(self) -> int:
        if self.embedding_size is not None:
            return self.embedding_size
        return 128 * math.ceil(self.vocab_size / 128)

    @property
    def mlp_width(self) -> int:
        """Output width of ff_proj (OLMo's ``mlp_hidden_size or mlp_ratio * d_model``)."""
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    @property
    def effective_bias_for_layer_norm(self) -> bool:
        return self.include_bias if self.bias_for_layer_norm is None else self.bias_for_layer_norm

    def build(self, device: Any = None) -> Any:
        """Build the OLMo model this config describes."""
        from olmo.nn.model import OLMo  # the schema layer only reaches down to build

        return OLMo(self, device=device)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ----- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise OLMoConfigurationError (one line: field, value, what is allowed) on any inconsistency."""
        for name in ("d_model", "n_heads", "n_layers", "max_sequence_length", "vocab_size", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise bad_value(name, getattr(self, name), "a positive integer")
        if self.d_model % self.n_heads != 0:
            raise bad_value("d_model", self.d_model, f"a multiple of n_heads={self.n_heads}")
        if self.n_kv_heads is not None and self.multi_query_attention is not None:
            if self.multi_query_attention != (self.n_kv_heads == 1):
                raise OLMoConfigurationError(
                    f"n_kv_heads={self.n_kv_heads} contradicts multi_query_attention="
                    f"{self.multi_query_attention}; set only one of them"
                )
        kv = self.effective_n_kv_heads
        if kv < 1 or self.n_heads % kv != 0:
            raise bad_value("n_kv_heads", self.n_kv_heads, f"a divisor of n_heads={self.n_heads} (or None)")
        if self.mlp_hidden_size is not None and self.mlp_hidden_size < 1:
            raise bad_value("mlp_hidden_size", self.mlp_hidden_size, "a positive integer or None")
        if self.activation_type == "swiglu" and self.mlp_width % 2 != 0:
            raise bad_value("mlp_hidden_size", self.mlp_width, "an even width with activation_type='swiglu'")
        if self.block_group_size < 1 or self.n_layers % self.block_group_size != 0:
            raise bad_value(
                "block_group_size", self.block_group_size, f"a positive divisor of n_layers={self.n_layers}"
            )
        if self.embedding_size is not None:
            if self.embedding_size < self.vocab_size:
                raise bad_value(
                    "embedding_size", self.embedding_size, f"None or at least vocab_size={self.vocab_size}"
                )
            if self.embedding_size % 128 != 0:
                warnings.warn(
                    f"embedding_size={self.embedding_size} is not a multiple of 128; matmuls will be slower",
                    stacklevel=2,
                )
        for name in ("attention_dropout", "residual_dropout", "embedding_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise bad_value(name, p, "a probability in [0, 1)")
        if self.clip_qkv is not None and self.clip_qkv <= 0:
            raise bad_value("clip_qkv", self.clip_qkv, "None or a positive number")
        if self.layer_norm_eps <= 0:
            raise bad_value("layer_norm_eps", self.layer_norm_eps, "a positive number")
        if self.init_std <= 0:
            raise bad_value("init_std", self.init_std, "a positive number")
        if self.init_cutoff_factor is not None and self.init_cutoff_factor <= 0:
            raise bad_value("init_cutoff_factor", self.init_cutoff_factor, "None or a positive number")
        self._validate_positional()
        if self.effective_positional == "rope":
            if self.head_dim % 2 != 0:
                raise bad_value("d_model", self.d_model, "an even head dimension (d_model/n_heads) with RoPE")
        self._validate_axis_names()

    def _validate_positional(self) -> None:
        # Unknown scheme names are caught by the positional registry (_validate_axis_names).
        if self.rope and self.alibi:
            raise OLMoConfigurationError(
                "rope=True and alibi=True: two positional schemes at once; set only one of them, "
                "or set positional instead"
            )
        flag = "rope" if self.rope else "alibi" if self.alibi else None
        if self.positional is not None and flag is not None and flag != self.positional:
            raise OLMoConfigurationError(
                f"positional={self.positional!r} and {flag}=True: two positional schemes at once; "
                "set only positional"
            )

    def _validate_axis_names(self) -> None:
        # The registries live in olmo.nn (one module per axis); import them here only to check names.
        axes = importlib.import_module("olmo.nn.axes")
        axes.check_config(self)
