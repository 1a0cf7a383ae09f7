"""The FLOP convention every comparison in the platform is drawn against (x-axis of every curve).

Per token, for a sequence length T (training FLOPs = 6N + 12·L·H·Q·T):
    forward  = 2·N + 4·L·H·Q·T
    backward = 4·N + 8·L·H·Q·T
N counts the weights of every matrix multiply: the attention input projections (so GQA's narrower K/V
projections count through N), attn_out, ff_proj, ff_out, and the LM head once (tied or not). Embedding
look-ups, norms, biases and element-wise ops are not matmuls and are not counted. The attention term
counts QKᵀ and AV for all H heads of width Q over the full T×T score matrix (no causal discount), as
``torch.utils.flop_counter`` does. Checked against FlopCounterMode in tests/test_flops.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from olmo.config import ModelConfig
from olmo.nn.activations import ACTIVATIONS


def matmul_params(config: ModelConfig) -> int:
    """N: weights of every matmul in a forward pass, LM head included once."""
    d = config.d_model
    kv_width = config.effective_n_kv_heads * config.head_dim
    ff_in = config.mlp_width
    ff_out_in = int(ff_in * ACTIVATIONS.get(config.activation_type).output_multiplier)  # as the block builds it
    per_layer = d * (d + 2 * kv_width) + d * d + d * ff_in + ff_out_in * d
    return config.n_layers * per_layer + d * config.padded_embedding_size


@dataclass(frozen=True)
class FlopsPerToken:
    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward


def flops_per_token(config: ModelConfig, seq_len: int | None = None) -> FlopsPerToken:
    """FLOPs per token of one training step (forward + backward) at ``seq_len`` (default: max length)."""
    t = config.max_sequence_length if seq_len is None else seq_len
    n = matmul_params(config)
    attention = config.n_layers * config.n_heads * config.head_dim * t
    return FlopsPerToken(forward=2 * n + 4 * attention, backward=4 * n + 8 * attention)
