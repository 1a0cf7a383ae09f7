"""What the model computes: kernels, masks, documents, caches, grouping, heads, norms, positions, names."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from model_helpers import (
    POSITIONAL,
    RELATIVE_POSITIONAL,
    assert_close,
    build,
    random_ids,
    tiny_config,
    twin,
)

from olmo import OLMo
from olmo.nn.activations import ACTIVATIONS, Activation
from olmo.nn.attention import Documents, eager_attention, flash_attention
from olmo.nn.blocks import AttentionContext
from olmo.nn.flops import matmul_params
from olmo.nn.norms import build_norm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

T = 12
DOC_LENS = torch.tensor([[3, 5, 4], [6, 6, 0]])  # (B, max_docs), zero-padded


def doc_spans(doc_lens):
    for row, lengths in enumerate(doc_lens.tolist()):
        start = 0
        for n in lengths:
            if n:
                yield row, start, n
                start += n


def block_causal_bias(doc_lens):
    """(B, 1, T, T) bool: True where query and key are in the same document and key <= query."""
    mask = torch.zeros(doc_lens.shape[0], 1, T, T, dtype=torch.bool)
    for row, start, n in doc_spans(doc_lens):
        mask[row, 0, start : start + n, start : start + n] = torch.ones(n, n, dtype=torch.bool).tril()
    return mask


def capture_kernel_inputs(block):
    """Wrap a block's attention kernel to record the q, k, v it receives."""
    seen = {}
    kernel = block.kernel

    def spy(q, k, v, **kwargs):
        seen.update(q=q, k=k, v=v)
        return kernel(q, k, v, **kwargs)

    block.kernel = spy
    return seen


# ----- attention kernels and masks ------------------------------------------------------------------


@pytest.mark.parametrize("positional", POSITIONAL)
@pytest.mark.parametrize("n_kv_heads", [None, 1, 2])
def test_sdpa_equals_eager_with_documents_and_cache(positional, n_kv_heads):
    sdpa = build(tiny_config(positional=positional, n_kv_heads=n_kv_heads))
    eager = twin(sdpa, attention_backend="eager")
    ids = random_ids(2, T)
    with torch.no_grad():
        assert_close(eager(ids, doc_lens=DOC_LENS).logits, sdpa(ids, doc_lens=DOC_LENS).logits)
        # Left-padded KV-cache decoding with a mask (what generate() does).
        mask = torch.ones(2, T, dtype=torch.long)
        mask[1, :3] = 0
        outs = {}
        for name, model in (("sdpa", sdpa), ("eager", eager)):
            out = model(ids[:, :8], attention_mask=mask[:, :8], use_cache=True)
            out = model(ids[:, 8:], attention_mask=mask, past_key_values=out.attn_key_values, use_cache=True)
            outs[name] = out
        assert_close(outs["eager"].logits, outs["sdpa"].logits)
        for (ke, ve), (ks, vs) in zip(outs["eager"].attn_key_values, outs["sdpa"].attn_key_values, strict=True):
            assert_close(ke, ks)
            assert_close(ve, vs)
        # ... and it equals the full forward pass over the real tokens.
        full = sdpa(ids, attention_mask=mask).logits
        assert_close(outs["sdpa"].logits, full[:, 8:])


def test_gqa_with_n_kv_heads_equal_to_n_heads_is_mha():
    gqa = build(tiny_config(n_kv_heads=4))
    mha = twin(gqa, n_kv_heads=None)  # strict load: the same parameter shapes
    ids = random_ids(2, T)
    assert_close(gqa(ids).logits, mha(ids).logits, atol=0, rtol=0)


def _repeat_kv_rows(weight, n_kv, n_heads, head_dim):
    """Rows of a K or V projection per kv head, repeated so that query head h reads kv head h // group."""
    return weight.view(n_kv, head_dim, *weight.shape[1:]).repeat_interleave(n_heads // n_kv, 0).flatten(0, 1)


@pytest.mark.parametrize("block_type", ["sequential", "llama"])
@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_gqa_equals_mha_with_repeated_kv_heads(block_type, n_kv_heads):
    """GQA = MHA whose K/V heads are copies: query head h shares kv head h // (n_heads / n_kv_heads)."""
    gqa = build(tiny_config(block_type=block_type, n_kv_heads=n_kv_heads))
    mha = OLMo(gqa.config.replace(n_kv_heads=None)).eval()
    c, d = gqa.config, gqa.config.d_model
    kv = n_kv_heads * c.head_dim
    state = gqa.state_dict()
    for i in range(c.n_layers):
        prefix = f"transformer.blocks.{i}."
        for suffix in ("weight", "bias"):
            if block_type == "sequential":
                q, k, v = state[prefix + "att_proj." + suffix].split((d, kv, kv))
                k, v = (_repeat_kv_rows(t, n_kv_heads, c.n_heads, c.head_dim) for t in (k, v))
                state[prefix + "att_proj." + suffix] = torch.cat((q, k, v))
            else:
                for name in ("k_proj", "v_proj"):
                    key = f"{prefix}{name}.{suffix}"
                    state[key] = _repeat_kv_rows(state[key], n_kv_heads, c.n_heads, c.head_dim)
    mha.load_state_dict(state)
    ids = random_ids(2, T)
    assert_close(gqa(ids).logits, mha(ids).logits)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("positional", RELATIVE_POSITIONAL)
def test_document_masking_equals_separate_documents(positional, backend):
    """rope/alibi/none depend only on position differences, so a document packed at offset s computes
    exactly what it computes alone from position 0."""
    model = build(tiny_config(positional=positional, attention_backend=backend))
    ids = random_ids(2, T)
    with torch.no_grad():
        packed = model(ids, doc_lens=DOC_LENS, max_doc_lens=[5, 6]).logits
        for row, start, n in doc_spans(DOC_LENS):
            alone = model(ids[row : row + 1, start : start + n]).logits[0]
            assert_close(packed[row, start : start + n], alone)
        # Without doc_lens the later documents see the earlier ones.
        assert not torch.allclose(model(ids).logits[0, 3:], packed[0, 3:])


@pytest.mark.parametrize("positional", POSITIONAL)
def test_document_masking_equals_block_causal_bias(positional):
    """Learned positions are absolute: a packed document keeps its offset (as in OLMo), so it differs from
    the document run alone at position 0. For every scheme, doc_lens equals the explicit block-causal
    attention_bias over the same positions."""
    model = build(tiny_config(positional=positional))
    ids = random_ids(2, T)
    with torch.no_grad():
        expected = model(ids, attention_bias=block_causal_bias(DOC_LENS)).logits
        assert_close(model(ids, doc_lens=DOC_LENS).logits, expected)


def test_document_lengths_must_cover_the_sequence():
    model = build(tiny_config())
    with pytest.raises(ValueError, match="doc_lens must sum to the sequence length 12"):
        model(random_ids(2, T), doc_lens=torch.tensor([[3, 5, 3], [6, 6, 0]]))


def test_flash_attn_kernel_keeps_documents_when_it_falls_back_to_sdpa():
    """In fp32 (or with a bias) flash_attn hands the call to SDPA; the document boundaries, which the model
    gave to this kernel only, must still mask the attention."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, T, 8), torch.randn(2, 2, T, 8), torch.randn(2, 2, T, 8)
    lengths = DOC_LENS.flatten()
    cu = torch.cat((torch.zeros(1, dtype=torch.long), lengths[lengths > 0].cumsum(0))).to(torch.int32)
    documents = Documents(cu, max_doc_len=6)
    out = flash_attention(q, k, v, bias=None, is_causal=True, dropout_p=0.0, documents=documents)
    bias = torch.where(block_causal_bias(DOC_LENS), 0.0, torch.finfo(torch.float32).min)
    expected = eager_attention(q, k, v, bias=bias, is_causal=False, dropout_p=0.0)
    assert_close(out, expected)


def test_bool_attention_bias_equals_default_causal():
    model = build(tiny_config(positional="alibi"))
    ids = random_ids(2, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    with torch.no_grad():
        default = model(ids).logits
        assert_close(model(ids, attention_bias=causal).logits, default)
        assert_close(model(ids, attention_bias=causal.view(1, 1, T, T).expand(2, 1, T, T)).logits, default)
        # Like OLMo, an explicit bias replaces the causal mask: all-True lets earlier tokens see later ones.
        changed = ids.clone()
        changed[:, -1] = (changed[:, -1] + 1) % model.config.vocab_size
        full = torch.ones(T, T, dtype=torch.bool)
        first = model(ids, attention_bias=full).logits[:, 0]
        assert not torch.allclose(model(changed, attention_bias=full).logits[:, 0], first)


# ----- structure: groups, hidden states, heads --------------------------------------------------------


def test_block_groups_equal_ungrouped_blocks():
    g = 2
    flat = build(tiny_config(n_layers=4))
    grouped = OLMo(flat.config.replace(block_group_size=g)).eval()
    state = {}
    for name, tensor in flat.state_dict().items():
        if name.startswith("transformer.blocks."):
            i, rest = name.removeprefix("transformer.blocks.").split(".", 1)
            name = f"transformer.block_groups.{int(i) // g}.{int(i) % g}.{rest}"
        state[name] = tensor
    grouped.load_state_dict(state)  # strict: every grouped name is block_groups.{i // g}.{i % g}
    ids = random_ids(2, T)
    with torch.no_grad():
        a, b = flat(ids, output_hidden_states=True), grouped(ids, output_hidden_states=True)
        assert_close(b.logits, a.logits)
        assert len(a.hidden_states) == 4 + 1
        assert len(b.hidden_states) == 4 // g + 1
        assert_close(b.hidden_states[1], a.hidden_states[2])  # the input of group 1 is the input of block 2
        # The KV cache works through groups: one (k, v) per layer.
        out = grouped(ids[:, :8], use_cache=True)
        assert len(out.attn_key_values) == 4
        out = grouped(ids[:, 8:], past_key_values=out.attn_key_values)
        assert_close(out.logits, a.logits[:, 8:])


def test_hidden_states_are_block_inputs_then_final_norm():
    model = build(tiny_config(positional="learned"))
    ids = random_ids(2, T)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        t = model.transformer
        assert len(out.hidden_states) == model.config.n_layers + 1
        assert_close(out.hidden_states[0], t.wte(ids) + t.wpe(torch.arange(T)))
        ctx = AttentionContext(None, True, None, 0)
        assert_close(out.hidden_states[1], model.blocks[0](out.hidden_states[0], ctx)[0])
        assert_close(out.logits, F.linear(out.hidden_states[-1], t.wte.weight))  # tied head on ln_f's output


def test_last_logits_only_is_the_last_position():
    model = build(tiny_config())
    ids = random_ids(2, T)
    with torch.no_grad():
        last = model(ids, last_logits_only=True).logits
        assert last.shape == (2, 1, model.config.padded_embedding_size)
        assert_close(last, model(ids).logits[:, -1:])


def test_input_embeddings_replace_the_token_lookup():
    model = build(tiny_config())
    ids = random_ids(2, T)
    with torch.no_grad():
        emb = model.transformer.wte(ids)
        assert_close(model(ids, input_embeddings=emb).logits, model(ids).logits)


def test_weight_tying():
    tied = build(tiny_config(weight_tying=True))
    untied = build(tiny_config(weight_tying=False))
    assert "transformer.ff_out.weight" not in tied.state_dict()
    assert untied.state_dict()["transformer.ff_out.weight"].shape == (128, 32)
    ids = random_ids(2, T)
    with torch.no_grad():
        out = tied(ids, output_hidden_states=True)
        assert_close(out.logits, out.hidden_states[-1] @ tied.transformer.wte.weight.T)
        out = untied(ids, output_hidden_states=True)
        assert_close(out.logits, untied.transformer.ff_out(out.hidden_states[-1]))
        assert not torch.allclose(out.logits, out.hidden_states[-1] @ untied.transformer.wte.weight.T)


def test_scale_logits_divides_by_sqrt_d_model():
    model = build(tiny_config())
    ids = random_ids(2, T)
    with torch.no_grad():
        assert_close(twin(model, scale_logits=True)(ids).logits, model(ids).logits / math.sqrt(32))


def test_embedding_layer_norm_is_applied_before_positions():
    model = build(tiny_config(positional="learned", embedding_layer_norm=True))
    assert "transformer.emb_norm.weight" in model.state_dict()
    assert "transformer.emb_norm.weight" not in build(tiny_config()).state_dict()
    t = model.transformer
    with torch.no_grad():
        t.emb_norm.weight.uniform_(0.5, 1.5)
        ids = random_ids(2, T)
        out = model(ids, output_hidden_states=True)
        assert_close(out.hidden_states[0], t.emb_norm(t.wte(ids)) + t.wpe(torch.arange(T)))


# ----- block wiring ----------------------------------------------------------------------------------


def expected_block_output(block, x, ctx, block_type, norm_after):
    def att(h):
        return block.attention(h, ctx, None, False)[0]

    if block_type == "parallel":
        if norm_after:
            return x + block.attn_norm(att(x)) + block.ff_norm(block.mlp(x))
        h = block.attn_norm(x)
        return x + att(h) + block.mlp(h)
    if norm_after:  # OLMo-2: norm the sub-layer output, inside the residual
        h = x + block.attn_norm(att(x))
        return h + block.ff_norm(block.mlp(h))
    h = x + att(block.attn_norm(x))
    return h + block.mlp(block.ff_norm(h))


@pytest.mark.parametrize("norm_after", [False, True])
@pytest.mark.parametrize("block_type", ["sequential", "llama", "parallel"])
def test_block_wiring(block_type, norm_after):
    model = build(tiny_config(block_type=block_type, norm_after=norm_after))
    block = model.blocks[0]
    with torch.no_grad():
        for norm in (block.attn_norm, block.ff_norm):
            if norm is not None:  # distinct affine weights, so swapped norms would be seen
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, T, 32)
        ctx = AttentionContext(None, True, None, 0)
        assert_close(block(x, ctx)[0], expected_block_output(block, x, ctx, block_type, norm_after))
    assert (block.ff_norm is None) == (block_type == "parallel" and not norm_after)


@pytest.mark.parametrize("block_type", ["sequential", "llama"])
def test_norm_after_changes_the_output(block_type):
    model = build(tiny_config(block_type=block_type))
    ids = random_ids(2, T)
    with torch.no_grad():
        assert not torch.allclose(twin(model, norm_after=True)(ids).logits, model(ids).logits, atol=1e-3)


# ----- attention details: clip_qkv, QK-norm ---------------------------------------------------------


@pytest.mark.parametrize("block_type", ["sequential", "llama", "parallel"])
def test_clip_qkv_clamps_queries_keys_and_values(block_type):
    clip = 0.25
    for clip_qkv in (None, clip):
        model = build(tiny_config(block_type=block_type, positional="none", clip_qkv=clip_qkv))
        block = model.blocks[0]
        with torch.no_grad():
            for proj in block.attention_input_projections():
                proj.weight.mul_(20.0)
            seen = capture_kernel_inputs(block)
            model(random_ids(2, T))
        peak = max(seen[name].abs().max().item() for name in "qkv")
        if clip_qkv is None:
            assert peak > clip
        else:
            assert peak == pytest.approx(clip)  # reached (the clamp is active) and never exceeded


def test_qk_norm_shapes_and_effect():
    model = build(tiny_config(n_kv_heads=2, positional="none", attention_layer_norm=True))
    block = model.blocks[0]
    assert block.q_norm.weight.shape == (32,)  # d_model
    assert block.k_norm.weight.shape == (2 * 8,)  # n_kv_heads * head_dim
    seen = capture_kernel_inputs(block)
    with torch.no_grad():
        model(random_ids(2, T))
    # The norm runs over the whole projection (before the head split): each token's q is standardised.
    q = seen["q"].transpose(1, 2).flatten(2)
    assert_close(q.mean(-1), torch.zeros(2, T), atol=1e-5, rtol=0)
    assert_close(q.var(-1, unbiased=False), torch.ones(2, T), atol=5e-3, rtol=0)  # eps shrinks it a bit
    bare = build(tiny_config(attention_layer_norm=True, attention_layer_norm_with_affine=False))
    assert bare.blocks[0].q_norm.weight is None


# ----- positional schemes -----------------------------------------------------------------------------


def test_alibi_slopes_and_bias():
    config = tiny_config(positional="alibi", n_heads=4, alibi_bias_max=8.0)
    model = build(config)
    slopes = model.positional.slopes(torch.device("cpu"))
    assert_close(slopes, torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]), atol=0, rtol=0)
    bias = model.positional.attention_bias(5, 5, torch.device("cpu"))
    assert bias.shape == (1, 4, 5, 5)
    for h in range(4):
        for i in range(5):
            for j in range(5):
                assert bias[0, h, i, j].item() == -abs(j - i) * slopes[h].item()
    # With a cache of past keys, the rows of the new queries are the last rows of the full bias.
    assert_close(model.positional.attention_bias(2, 5, torch.device("cpu")), bias[:, :, 3:5, :5])


def rotate_at(scheme, t, position):
    """RoPE-rotate a (1, 1, 1, D) vector as if it sat at ``position``."""
    return scheme.rotate(t, t, position)[0]


def test_rope_scores_depend_only_on_the_position_difference():
    model = build(tiny_config(positional="rope", max_sequence_length=64))
    scheme = model.positional
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        return (rotate_at(scheme, q, m) * rotate_at(scheme, k, n)).sum().item()

    for m, n in ((5, 2), (9, 9), (3, 7)):
        for shift in (1, 10, 40):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), rel=1e-5, abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), rel=1e-3)


def test_rope_is_the_neox_half_split_rotation():
    config = tiny_config(positional="rope", rope_theta=500.0)
    scheme = build(config).positional
    d, position = config.head_dim, 3
    t = torch.randn(1, 1, 1, d)
    out = rotate_at(scheme, t, position)[0, 0, 0]
    t = t[0, 0, 0]
    for i in range(d // 2):  # dimension i pairs with i + d/2 (not with its neighbour i + 1)
        angle = torch.tensor(position / 500.0 ** (2 * i / d))
        x1, x2 = t[i], t[i + d // 2]
        assert out[i].item() == pytest.approx((x1 * angle.cos() - x2 * angle.sin()).item(), abs=1e-5)
        assert out[i + d // 2].item() == pytest.approx((x2 * angle.cos() + x1 * angle.sin()).item(), abs=1e-5)


def test_learned_positions_reject_sequences_longer_than_the_table():
    model = build(tiny_config(positional="learned"))
    with pytest.raises(ValueError, match="max_sequence_length=16"):
        model(random_ids(1, 17))


# ----- norms ------------------------------------------------------------------------------------------


def test_norm_dtypes_under_autocast():
    x = torch.randn(2, T, 32)
    norms = {name: build_norm(tiny_config(layer_norm_type=name)) for name in ("default", "low_precision", "rms")}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = {name: norm(x) for name, norm in norms.items()}
        bare_rms = build_norm(tiny_config(layer_norm_type="rms"), elementwise_affine=False)
        assert bare_rms(x.bfloat16()).dtype == torch.bfloat16  # rms: the input dtype
        # As in OLMo, the fp32 affine weight then promotes a bf16 input: weight * x is fp32.
        assert norms["rms"](x.bfloat16()).dtype == torch.float32
    assert outs["default"].dtype == torch.float32
    assert outs["low_precision"].dtype == torch.bfloat16
    assert outs["rms"].dtype == torch.float32
    assert_close(outs["low_precision"].float(), outs["default"], atol=3e-2, rtol=3e-2)
    # Without autocast low_precision is exactly the default LayerNorm; rms is x / rms(x).
    assert torch.equal(norms["low_precision"](x), norms["default"](x))
    assert_close(norms["rms"](x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))


def test_model_under_autocast_returns_bf16_logits():
    model = build(tiny_config(layer_norm_type="low_precision"))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(random_ids(2, T)).logits
    assert logits.dtype == torch.bfloat16
    assert_close(logits.float(), model(random_ids(2, T)).logits.detach(), atol=5e-2, rtol=5e-2)


# ----- names, buffers, devices, registries -------------------------------------------------------------


def test_state_dict_names_match_olmo():
    def names(**overrides):
        return set(build(tiny_config(**overrides)).state_dict())

    block = [
        f"transformer.blocks.{i}.{m}.{p}"
        for i in range(2)
        for m in ("attn_out", "ff_proj", "ff_out", "attn_norm", "ff_norm")
        for p in ("weight", "bias")
    ]
    top = ["transformer.wte.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"]

    def proj(*modules):
        return [f"transformer.blocks.{i}.{m}.{p}" for i in range(2) for m in modules for p in ("weight", "bias")]

    assert names(block_type="sequential") == set(top + block + proj("att_proj"))
    assert names(block_type="llama") == set(top + block + proj("q_proj", "k_proj", "v_proj"))
    assert names(positional="learned") == set(top + block + proj("att_proj") + ["transformer.wpe.weight"])
    untied = names(weight_tying=False, include_bias=False)
    assert "transformer.ff_out.weight" in untied and "transformer.ff_out.bias" not in untied
    assert not any(n.endswith(".bias") for n in untied)


def test_buffer_cache_is_shared_lazily_grown_and_not_state():
    model = build(tiny_config(positional="alibi", max_sequence_length=64))
    cache = model.positional.cache
    with torch.no_grad():
        model(random_ids(1, 8))
        key = ("alibi_attention_bias", "cpu")
        first = cache[key][1]
        model(random_ids(1, 8))
        model(random_ids(1, 5))
        assert cache[key][1] is first  # reused, not rebuilt
        model(random_ids(1, 20))
        assert cache[key][0] == 20 and cache[key][1].shape[-1] == 20  # grown for the longer input
        model(random_ids(1, 21))
        assert cache[key][0] == 40  # at least doubled, so token-by-token decoding rarely rebuilds
        grown = cache[key][1]
        model(random_ids(1, 8))
        assert cache[key][1] is grown
    assert ("causal_attention_bias", "cpu") in cache
    assert list(model.buffers()) == []
    params = list(model.parameters())
    for _, tensor in cache.values():
        assert not any(tensor is p for p in params)
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()}


def test_decoding_rebuilds_the_cache_rarely():
    model = build(tiny_config(positional="rope", max_sequence_length=64))
    cache = model.positional.cache
    ids = random_ids(1, 64)
    builds = set()
    with torch.no_grad():
        out = model(ids[:, :2], use_cache=True)
        for t in range(2, 64):
            out = model(ids[:, t : t + 1], past_key_values=out.attn_key_values, use_cache=True)
            builds.add(cache[("causal_attention_bias", "cpu")][0])  # the length it was built for
    assert builds == {3, 6, 12, 24, 48, 96}


def test_rope_cache_is_reused():
    model = build(tiny_config(positional="rope"))
    with torch.no_grad():
        model(random_ids(1, 8))
        table = model.positional.cache[("rope_sin_cos", "cpu")][1]
        model(random_ids(1, 6))
        assert model.positional.cache[("rope_sin_cos", "cpu")][1] is table


def test_meta_device_builds_without_allocating():
    # A 5.6B-parameter model (22 GB in fp32) builds in no time on meta: nothing is allocated.
    big = tiny_config(d_model=4096, n_heads=32, n_layers=32, mlp_ratio=4, vocab_size=50280, embedding_size=None)
    model = OLMo(big, device="meta")
    assert sum(p.numel() for p in model.parameters()) > 5e9
    assert all(p.is_meta for p in model.parameters())
    model = OLMo(tiny_config(init_device="meta"))
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.reset_parameters()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model(random_ids(1, 4)).logits.shape == (1, 4, 128)


def test_dropout_only_in_training():
    model = build(tiny_config(attention_dropout=0.3, residual_dropout=0.3, embedding_dropout=0.3))
    ids = random_ids(2, T)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        model.train()
        assert not torch.allclose(model(ids).logits, model(ids).logits)


def test_a_new_registered_activation_needs_nothing_else(monkeypatch):
    """The registry property: one class + one entry, and the model, validation and FLOPs follow."""

    class GeGLU(Activation):
        output_multiplier = 0.5

        def forward(self, x):
            x, gate = x.chunk(2, dim=-1)
            return F.gelu(gate) * x

    monkeypatch.setitem(ACTIVATIONS._entries, "geglu", GeGLU)
    model = build(tiny_config(activation_type="geglu"))
    assert model.blocks[0].ff_out.in_features == model.config.mlp_width // 2
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(model.config) == linear + model.transformer.wte.weight.numel()
