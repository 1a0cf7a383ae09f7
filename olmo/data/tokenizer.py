"""The tokenizer: a byte-level BPE trained on the corpus (cached), or any Hugging Face tokenizer.json."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from olmo.config.data import TokenizerConfig
from olmo.data.cache import build_once, file_sha256, stable_hash
from olmo.data.sources import TextCorpus
from olmo.errors import bad_value

TOKENIZER_FILE = "tokenizer.json"


def byte_level_bpe(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.BpeTrainer]:
    """An untrained byte-level BPE (GPT-2 style: every byte is a token, so any text round-trips exactly)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=cfg.special_tokens,  # first, so the EOS id is 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tokenizer, trainer


def train_tokenizer(corpus: TextCorpus, cfg: TokenizerConfig, cache_root: Path) -> tuple[Path, bool]:
    """Train (once; cached by corpus fingerprint and config) and return (path of tokenizer.json, built now)."""
    key = stable_hash("bpe", corpus.fingerprint, cfg.vocab_size, cfg.special_tokens)
    final = cache_root / f"tokenizer-{key}"

    def build(tmp: Path) -> None:
        tokenizer, trainer = byte_level_bpe(cfg)
        # Trained on every document, validation included: the leak is the same for every compared model.
        tokenizer.train_from_iterator((doc.text for doc in corpus.documents()), trainer)
        tokenizer.save(str(tmp / TOKENIZER_FILE))

    built = build_once(final, build)
    return final / TOKENIZER_FILE, built


def load_tokenizer(path: str | Path, field: str = "data.tokenizer.path") -> Tokenizer:
    path = Path(path).expanduser()
    if not path.is_file():
        raise bad_value(field, str(path), "an existing Hugging Face tokenizer.json file")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception on malformed files
        raise bad_value(field, str(path), f"a valid Hugging Face tokenizer.json ({e})") from e


def tokenizer_hash(path: Path) -> str:
    return file_sha256(path)


def eos_token_id(tokenizer: Tokenizer, eos_token: str) -> int:
    token_id = tokenizer.token_to_id(eos_token)
    if token_id is None:
        raise bad_value("data.tokenizer.eos_token", eos_token, "a token in the tokenizer's vocabulary")
    return token_id

