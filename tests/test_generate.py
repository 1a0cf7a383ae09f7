"""Generation: beam search, samplers, scorers, constraints, the lean decode step, OLMo.generate semantics."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from model_helpers import AXIS_COMBOS, combo_config, combo_id

from olmo import ModelConfig, OLMo
from olmo.errors import OLMoConfigurationError
from olmo.generate import (
    BannedTokensConstraint,
    BeamSearch,
    Constraint,
    DeterministicSampler,
    GumbelSampler,
    LengthNormalizedSequenceLogProbabilityScorer,
    MultinomialSampler,
    RepeatedNGramBlockingConstraint,
    SequenceLogProbabilityScorer,
    TopKSampler,
    TopPSampler,
    generate,
)
from olmo.generate.cli import left_pad
from olmo.generate.decoder import (
    FastDecoder,
    choose_linear_kernel,
    fast_decode_unsupported,
)
from olmo.generate.scorers import sequence_lengths
from olmo.nn.linear import onednn_available

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 64
EMBEDDING = 128  # the logits have 128 columns (the padding rows can be generated, as in the original)
EOS = 0


def make_model(seed: int = 0, scale: float = 0.5, **overrides) -> OLMo:
    """A tiny model with weights spread out (random init is nearly uniform: ties would make argmax fragile)."""
    fields = dict(
        d_model=32, n_heads=4, n_layers=2, mlp_ratio=2, vocab_size=VOCAB, embedding_size=EMBEDDING,
        max_sequence_length=64, positional="rope", attention_dropout=0.0, residual_dropout=0.0,
        embedding_dropout=0.0, eos_token_id=EOS, pad_token_id=EOS,
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    model = OLMo(ModelConfig(**fields)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def prompts(batch: int = 2, length: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def greedy_by_hand(model: OLMo, ids: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full forward passes, no cache: argmax of the last position; EOS ends a row (then EOS padding)."""
    out, total = [], torch.zeros(ids.shape[0])
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(steps):
            log_probs = F.log_softmax(model(ids).logits[:, -1].float(), dim=-1)
            token = log_probs.argmax(-1)
            token = torch.where(done, torch.full_like(token, EOS), token)
            total += torch.where(done, 0.0, log_probs.gather(1, token[:, None])[:, 0])
            done |= token == EOS
            out.append(token)
            ids = torch.cat([ids, token[:, None]], dim=1)
            if done.all():
                break
    return torch.stack(out, dim=1), total


# ----- OLMo.generate semantics --------------------------------------------------------------------------
def test_greedy_equals_argmax_of_full_forwards():
    model = make_model()
    x = prompts(3)
    expected, total = greedy_by_hand(model, x, 12)
    out = model.generate(x, max_steps=12)
    assert out.token_ids.shape == (3, 1, expected.shape[1])
    assert torch.equal(out.token_ids[:, 0], expected)
    torch.testing.assert_close(out.scores[:, 0], total, atol=1e-5, rtol=0)


def test_deterministic_beam_one_is_greedy_and_stops_at_eos():
    model = make_model(seed=3)
    x = prompts(4, seed=5)
    # Make EOS the most likely first token of row 0 only: that row ends at once, the others go on.
    first = model(x).logits[:, -1].argmax(-1)
    model.config.eos_token_id = int(first[0])
    out = model.generate(x, max_steps=8, beam_size=1, sampler=DeterministicSampler())
    assert out.token_ids[0, 0].eq(int(first[0])).all()  # ended, then padded with EOS
    model.config.eos_token_id = EOS


@pytest.mark.parametrize("overrides", [
    dict(positional="rope"), dict(positional="alibi"), dict(positional="learned"), dict(positional="none"),
    dict(block_type="llama", n_kv_heads=2), dict(block_type="parallel", n_kv_heads=1),
    dict(layer_norm_type="rms", norm_after=True, attention_layer_norm=True, clip_qkv=1.0),
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_cached_and_uncached_decoding_agree(overrides):
    model = make_model(**overrides)
    x = prompts(2, seed=7)
    expected, total = greedy_by_hand(model, x, 10)
    for decoder in ("auto", "forward"):
        out = generate(model, x, max_steps=10, decoder=decoder)
        assert torch.equal(out.token_ids[:, 0], expected), decoder
        torch.testing.assert_close(out.scores[:, 0], total, atol=1e-4, rtol=0)


@pytest.mark.parametrize("positional", ["rope", "alibi", "none"])
def test_left_padded_batch_scores_equal_single_prompts(positional):
    model = make_model(positional=positional, seed=2)
    rows = [[5, 9, 13], [7, 3, 22, 40, 41, 8], [11]]
    ids, mask = left_pad(rows, pad_id=EOS)
    batched = model.generate(ids, mask, max_steps=8, beam_size=3)
    for i, row in enumerate(rows):
        single = model.generate(torch.tensor([row]), max_steps=8, beam_size=3)
        width = single.token_ids.shape[-1]
        assert torch.equal(batched.token_ids[i, :, :width], single.token_ids[0])
        torch.testing.assert_close(batched.scores[i], single.scores[0], atol=1e-5, rtol=1e-5)


def test_fully_unpadded_mask_is_the_same_as_no_mask():
    model = make_model()
    x = prompts(2)
    a = model.generate(x, torch.ones_like(x), max_steps=6, beam_size=2)
    b = model.generate(x, max_steps=6, beam_size=2)
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.scores, b.scores)


def test_beams_are_sorted_distinct_and_end_with_eos_padding():
    model = make_model(seed=4)
    out = model.generate(prompts(2, seed=9), max_steps=10, beam_size=4)
    assert out.token_ids.shape[:2] == (2, 4) and out.scores.shape == (2, 4)
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    for row in out.token_ids:
        assert len({tuple(beam.tolist()) for beam in row}) == 4
        for beam in row.tolist():
            if EOS in beam:  # after the first EOS, only EOS
                assert set(beam[beam.index(EOS):]) == {EOS}


def test_beam_search_scores_are_sequence_log_probabilities():
    model = make_model(seed=6)
    x = prompts(1, seed=3)
    out = model.generate(x, max_steps=5, beam_size=3)
    for beam, score in zip(out.token_ids[0], out.scores[0], strict=True):
        ids, total = x, 0.0
        for token in beam.tolist():
            total += F.log_softmax(model(ids).logits[0, -1], -1)[token].item()
            if token == EOS:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        assert score.item() == pytest.approx(total, abs=1e-4)


def test_wider_beam_finds_a_sequence_at_least_as_likely_as_greedy():
    model = make_model(seed=8)
    x = prompts(3, seed=4)
    greedy = model.generate(x, max_steps=6, min_steps=6)
    beam = model.generate(x, max_steps=6, min_steps=6, beam_size=5)
    assert (beam.scores[:, 0] >= greedy.scores[:, 0] - 1e-5).all()


def test_min_steps_blocks_eos_until_reached():
    model = make_model(seed=3)
    x = prompts(2, seed=5)
    first = model(x).logits[:, -1].argmax(-1)
    model.config.eos_token_id = int(first[0])  # row 0 would end at once
    try:
        assert model.generate(x, max_steps=6).token_ids[0, 0, 0] == first[0]
        for min_steps in (1, 4):
            out = model.generate(x, max_steps=6, beam_size=2, min_steps=min_steps)
            assert out.token_ids.shape[-1] >= min_steps
            assert (out.token_ids[:, :, :min_steps] != int(first[0])).all()
    finally:
        model.config.eos_token_id = EOS


def test_generate_restores_mode_and_leaves_the_model_trainable():
    model = make_model(positional="rope")
    model.train()
    model.generate(prompts(2), max_steps=20)
    assert model.training
    loss = model(prompts(2, length=12)).logits.sum()
    loss.backward()  # no inference tensors left in the model's caches
    assert model.transformer.wte.weight.grad is not None


def test_generate_argument_errors():
    model = make_model()
    with pytest.raises(OLMoConfigurationError, match="beam_size"):
        model.generate(prompts(1), beam_size=EMBEDDING + 1)
    with pytest.raises(OLMoConfigurationError, match="max_steps"):
        model.generate(prompts(1), max_steps=0)
    with pytest.raises(OLMoConfigurationError, match="min_steps"):
        model.generate(prompts(1), max_steps=3, min_steps=4)
    with pytest.raises(ValueError, match="attention_mask"):
        model.generate(prompts(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(torch.tensor([1, 2, 3]))


# ----- the lean decode step against OLMo.forward -----------------------------------------------------------
def _decoders_agree(config: ModelConfig) -> None:
    torch.manual_seed(0)
    model = OLMo(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    assert fast_decode_unsupported(model) is None
    ids, mask = left_pad([[3, 4, 5, 6, 7], [8, 9]], pad_id=0)
    for m in (None, mask):
        a = generate(model, ids, m, max_steps=6, beam_size=2, min_steps=6)
        b = generate(model, ids, m, max_steps=6, beam_size=2, min_steps=6, decoder="forward")
        assert torch.equal(a.token_ids, b.token_ids)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-6)


# Every value of every axis at least once (the whole matrix is the slow test below).
_COVER = [AXIS_COMBOS[i] for i in range(0, len(AXIS_COMBOS), 27)]


@pytest.mark.parametrize("combo", _COVER, ids=combo_id)
def test_fast_decoder_matches_forward(combo):
    _decoders_agree(combo_config(combo, max_sequence_length=32, eos_token_id=0))


@pytest.mark.parametrize("extra", [
    dict(clip_qkv=0.5), dict(attention_layer_norm=True, norm_after=True),
    dict(weight_tying=False, scale_logits=True, embedding_layer_norm=True), dict(block_group_size=2),
    dict(include_bias=False, layer_norm_with_affine=False), dict(attention_backend="eager"),
    dict(bias_for_layer_norm=True, attention_layer_norm=True), dict(rope_full_precision=False),
], ids=lambda o: "-".join(o))
@pytest.mark.parametrize("norm", ["default", "rms"])
def test_fast_decoder_matches_forward_options(extra, norm):
    _decoders_agree(combo_config(("gqa", "rope", norm, "swiglu", "sequential"), max_sequence_length=32,
                                 eos_token_id=0, **extra))


@pytest.mark.parametrize(("batch", "beam", "kernel"), [(1, 1, "transposed"), (2, 1, "onednn"), (2, 2, "onednn")])
@pytest.mark.parametrize("block", ["sequential", "llama", "parallel"])
def test_fast_decoder_linear_kernels_match_forward(block, batch, beam, kernel):
    # 64 steps on CPU: one row multiplies by (in, out) weight copies, 2+ rows by oneDNN-prepacked weights (biases
    # included here); both round differently from F.linear only.
    if kernel == "onednn" and not onednn_available():
        pytest.skip("this torch build has no oneDNN")
    assert choose_linear_kernel(torch.device("cpu"), batch * beam, 64) == kernel
    model = make_model(block_type=block, include_bias=True, weight_tying=False, n_kv_heads=2, scale=0.3)
    x = prompts(batch, seed=3)
    a = generate(model, x, max_steps=64, min_steps=64, beam_size=beam)
    b = generate(model, x, max_steps=64, min_steps=64, beam_size=beam, decoder="forward")
    assert torch.equal(a.token_ids, b.token_ids)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-5)


def test_linear_kernel_choice():
    cpu = torch.device("cpu")
    assert choose_linear_kernel(cpu, 8, 16) == "plain"  # too short to pay for a weight copy
    assert choose_linear_kernel(cpu, 1, 32) == "plain"
    assert choose_linear_kernel(cpu, 1, 64) == "transposed"
    assert choose_linear_kernel(cpu, 2, 32) == ("onednn" if onednn_available() else "plain")
    assert choose_linear_kernel(torch.device("cuda"), 8, 512) == "plain"  # no tensor is made: no GPU needed
    with pytest.raises(ValueError, match="linear='fast' is invalid; allowed: plain, transposed, onednn"):
        FastDecoder(make_model(), linear="fast")


@pytest.mark.slow
@pytest.mark.parametrize("combo", AXIS_COMBOS, ids=combo_id)
def test_fast_decoder_matches_forward_every_combination(combo):
    _decoders_agree(combo_config(combo, max_sequence_length=32, eos_token_id=0))


def test_fast_decoder_falls_back_outside_its_scope():
    model = make_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast_decode_unsupported(model) == "autocast"
    assert "bfloat16" in fast_decode_unsupported(make_model().to(torch.bfloat16))
    bf16 = make_model().to(torch.bfloat16)
    out = bf16.generate(prompts(1), max_steps=4)  # decodes through OLMo.forward
    assert out.token_ids.shape[-1] <= 4


# ----- BeamSearch on synthetic step functions ------------------------------------------------------------
def markov_step(table: torch.Tensor):
    """A step function whose next-token log-probabilities depend on the last token only."""

    def step(last, state, timestep):
        return table[last], state

    return step


def test_length_penalty_reorders_beams():
    # From the start (token 1): EOS now (p=0.4) or a long path 2 -> 3 -> 3 ... of high per-token probability.
    v = 4
    probs = torch.full((v, v), 1e-6)
    probs[1, EOS], probs[1, 2] = 0.4, 0.6
    probs[2, 3], probs[2, EOS] = 0.9, 0.1
    probs[3, 3], probs[3, EOS] = 0.5, 0.5
    probs[EOS, EOS] = 1.0
    table = (probs / probs.sum(-1, keepdim=True)).log()
    start = torch.tensor([1])

    def search(scorer):
        bs = BeamSearch(EOS, max_steps=4, beam_size=3, final_sequence_scorer=scorer)
        return bs.search(start, {}, markov_step(table))

    seqs, scores = search(SequenceLogProbabilityScorer())
    assert seqs[0, 0].tolist()[0] == EOS  # the summed log-probability prefers the shortest sequence
    seqs, scores = search(LengthNormalizedSequenceLogProbabilityScorer(length_penalty=1.0))
    assert seqs[0, 0].tolist()[:2] == [2, 3]  # the per-token average prefers the long one
    assert (scores[0, :-1] >= scores[0, 1:]).all()


def test_sequence_lengths_count_up_to_the_first_eos():
    preds = torch.tensor([[[5, 6, EOS, EOS], [5, 6, 7, 8], [EOS, EOS, EOS, EOS]]])
    assert sequence_lengths(preds, EOS).tolist() == [[3, 4, 1]]
    scorer = LengthNormalizedSequenceLogProbabilityScorer(length_penalty=2.0)
    assert scorer.score(preds, torch.tensor([[-9.0, -16.0, -1.0]]), EOS).tolist() == [[-1.0, -1.0, -1.0]]


def test_repeated_ngram_blocking_never_repeats_an_ngram():
    model = make_model(seed=11, scale=1.0)
    x = prompts(3, seed=2)
    free = model.generate(x, max_steps=30, min_steps=30)

    def has_repeat(tokens, n):
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        return len(grams) != len(set(grams))

    assert any(has_repeat(row[0].tolist(), 2) for row in free.token_ids)  # the model does loop without it
    for n in (1, 2, 3):
        out = model.generate(x, max_steps=30, beam_size=2, constraints=[RepeatedNGramBlockingConstraint(n)])
        for row in out.token_ids:
            for beam in row.tolist():
                beam = beam[: beam.index(EOS) + 1] if EOS in beam else beam
                assert not has_repeat(beam, n), (n, beam)


def test_custom_constraint_through_the_abstract_interface():
    class NoEvenAfterOdd(Constraint):
        def init_beam_state(self):
            return None

        def banned_tokens(self, last):
            return list(range(2, EMBEDDING, 2)) if last is not None and last % 2 == 1 else []

        def advance_beam(self, beam_state, token):
            return token

    model = make_model(seed=5)
    out = model.generate(prompts(2), max_steps=15, beam_size=3, constraints=[NoEvenAfterOdd()])
    for row in out.token_ids.reshape(-1, out.token_ids.shape[-1]).tolist():
        for a, b in itertools.pairwise(row):
            assert not (a % 2 == 1 and b % 2 == 0 and b != EOS)


def test_banned_tokens_constraint():
    model = make_model(seed=5)
    banned = range(VOCAB // 2, EMBEDDING)
    out = model.generate(prompts(2), max_steps=10, beam_size=2, constraints=[BannedTokensConstraint(banned)])
    assert (out.token_ids < VOCAB // 2).all()


# ----- samplers -------------------------------------------------------------------------------------------
LOG_PROBS = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02]).log()


def draw_first_tokens(sampler, n: int = 4000, beam_size: int = 1) -> torch.Tensor:
    """n independent first tokens (a batch of n identical start nodes) from a fixed distribution."""

    def step(last, state, timestep):
        return LOG_PROBS.expand(last.shape[0], -1), state

    bs = BeamSearch(end_index=EOS + 100, max_steps=1, beam_size=beam_size, sampler=sampler)
    seqs, _ = bs.search(torch.zeros(n, dtype=torch.long), {}, step)
    return seqs[:, :, 0]


def test_top_k_samples_only_among_the_k_most_likely():
    torch.manual_seed(0)
    tokens = draw_first_tokens(TopKSampler(k=3))
    assert set(tokens.unique().tolist()) == {0, 1, 2}
    freq = torch.bincount(tokens.flatten(), minlength=3).float() / tokens.numel()
    expected = LOG_PROBS[:3].softmax(-1)
    assert torch.allclose(freq[:3], expected, atol=0.03)


def test_top_p_samples_within_the_nucleus():
    torch.manual_seed(0)
    tokens = draw_first_tokens(TopPSampler(p=0.7))  # 0.4 + 0.25 < 0.7 <= 0.4 + 0.25 + 0.15
    assert set(tokens.unique().tolist()) == {0, 1, 2}
    tokens = draw_first_tokens(TopPSampler(p=0.3))
    assert set(tokens.unique().tolist()) == {0}


@pytest.mark.parametrize("sampler", [MultinomialSampler(), GumbelSampler()], ids=["multinomial", "gumbel"])
def test_unbiased_samplers_follow_the_distribution(sampler):
    torch.manual_seed(0)
    tokens = draw_first_tokens(sampler, n=6000)
    freq = torch.bincount(tokens.flatten(), minlength=7).float() / tokens.numel()
    assert torch.allclose(freq, LOG_PROBS.exp(), atol=0.025)


def test_sampling_without_replacement_gives_distinct_beams():
    torch.manual_seed(0)
    for sampler in (MultinomialSampler(), TopKSampler(k=4), TopPSampler(p=0.9), GumbelSampler()):
        tokens = draw_first_tokens(sampler, n=200, beam_size=3)
        assert all(len(set(row)) == 3 for row in tokens.tolist()), sampler


def test_temperature_towards_zero_tends_to_greedy():
    model = make_model(seed=9)
    x = prompts(3, seed=8)
    greedy = model.generate(x, max_steps=10)
    for sampler in (MultinomialSampler(temperature=1e-4), TopKSampler(k=5, temperature=1e-4),
                    TopPSampler(p=0.9, temperature=1e-4), GumbelSampler(temperature=1e-4)):
        torch.manual_seed(1)
        out = model.generate(x, max_steps=10, sampler=sampler)
        assert torch.equal(out.token_ids, greedy.token_ids), type(sampler).__name__


@pytest.mark.parametrize("sampler", [
    MultinomialSampler(temperature=1.3), TopKSampler(k=8), TopPSampler(p=0.8), GumbelSampler(),
], ids=lambda s: type(s).__name__)
def test_sampling_is_reproducible_under_a_seed_and_varies_without(sampler):
    model = make_model(seed=2, scale=0.2)
    x = prompts(2)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(model.generate(x, max_steps=12, beam_size=2, sampler=sampler))
    assert torch.equal(runs[0].token_ids, runs[1].token_ids) and torch.equal(runs[0].scores, runs[1].scores)
    assert not torch.equal(runs[0].token_ids, runs[2].token_ids)


def test_finished_beams_with_sampling_without_replacement_do_not_break():
    # Once a beam has ended only EOS is possible; drawing 3 distinct candidates from it must still work.
    model = make_model(seed=3)
    x = prompts(2, seed=5)
    model.config.eos_token_id = int(model(x).logits[:, -1].argmax(-1)[0])
    try:
        for sampler in (MultinomialSampler(), TopKSampler(k=3), TopPSampler(p=0.5)):
            torch.manual_seed(0)
            out = model.generate(x, max_steps=6, beam_size=3, sampler=sampler)
            assert torch.isfinite(out.scores).all()
    finally:
        model.config.eos_token_id = EOS


def test_sampler_argument_errors():
    with pytest.raises(OLMoConfigurationError, match="temperature"):
        MultinomialSampler(temperature=0)
    with pytest.raises(OLMoConfigurationError, match="top_k"):
        TopKSampler(k=0)
    with pytest.raises(OLMoConfigurationError, match="top_p"):
        TopPSampler(p=1.5)
    with pytest.raises(OLMoConfigurationError, match="per_node_beam_size"):
        draw_first_tokens(TopKSampler(k=2), n=2, beam_size=3)
    with pytest.raises(OLMoConfigurationError, match="ngram_size"):
        RepeatedNGramBlockingConstraint(0)


def test_step_functions_may_leave_out_the_timestep():
    table = torch.randn(6, 6).log_softmax(-1)
    bs = BeamSearch(EOS, max_steps=5, beam_size=2)
    with_t = bs.search(torch.tensor([1, 2]), {}, lambda last, state, t: (table[last], state))
    without = bs.search(torch.tensor([1, 2]), {}, lambda last, state: (table[last], state))
    assert torch.equal(with_t[0], without[0]) and torch.equal(with_t[1], without[1])
