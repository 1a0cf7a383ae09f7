"""DataConfig and TokenizerConfig: which corpus, which tokenizer, how to split it, where to cache it.

Plain field types (str, int, float, list, Optional, nested dataclasses) so OmegaConf structured configs
accept them. Checks that need the filesystem (paths exist, memmap contents) run in ``olmo.data.prepare_data``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olmo.errors import bad_value

SOURCES = ("shakespeare", "text", "memmap")
MEMMAP_DTYPES = ("uint16", "uint32")
BYTE_ALPHABET_SIZE = 256  # a byte-level BPE starts from all 256 bytes before any merge
CACHE_ENV_VAR = "OLMO_SWEEPS_CACHE"


@dataclass
class TokenizerConfig:
    # Vocabulary size: the size to train a byte-level BPE to; for source=memmap without a tokenizer file,
    # the size of the token id space of the files. Ignored when `path` is given (the file decides).
    vocab_size: int = 4096
    path: str | None = None  # a Hugging Face tokenizer.json to load instead of training one
    eos_token: str = "<|endoftext|>"  # appended after every document; a special token of the tokenizer

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.vocab_size < 1:
            raise bad_value("data.tokenizer.vocab_size", self.vocab_size, "a positive integer")
        if not self.eos_token:
            raise bad_value("data.tokenizer.eos_token", self.eos_token, "a non-empty string")

    @property
    def special_tokens(self) -> list[str]:
        return [self.eos_token]


@dataclass
class DataConfig:
    source: str = "shakespeare"  # shakespeare | text | memmap
    # text: files, folders or globs of .txt / .md / .jsonl; memmap: .npy files of token ids
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"  # the JSON key holding a document's text in .jsonl files
    memmap_dtype: str = "uint16"  # dtype of headerless memmap files (.npy files with a header must agree)
    eos_token_id: int | None = None  # memmap: the id separating documents (default: from tokenizer.path)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    validation_fraction: float = 0.1  # fraction of whole documents held out; 0 disables validation
    seed: int = 0  # seeds the choice of validation documents
    cache_dir: str | None = None  # default: $OLMO_SWEEPS_CACHE or ~/.cache/olmo-sweeps

    def __post_init__(self) -> None:
        if isinstance(self.tokenizer, dict):  # built from a plain mapping (YAML, tests)
            self.tokenizer = TokenizerConfig(**self.tokenizer)
        self.validate()

    @property
    def trains_tokenizer(self) -> bool:
        return self.source != "memmap" and self.tokenizer.path is None

    def resolved_cache_dir(self) -> Path:
        root = self.cache_dir or os.environ.get(CACHE_ENV_VAR) or "~/.cache/olmo-sweeps"
        return Path(root).expanduser()

    def replace(self, **changes: Any) -> DataConfig:
        return dataclasses.replace(self, **changes)

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise OLMoConfigurationError (one line: field, value, what is allowed) on any inconsistency."""
        if self.source not in SOURCES:
            raise bad_value("data.source", self.source, SOURCES)
        self.tokenizer.validate()
        if isinstance(self.paths, str):  # a bare string would be iterated character by character
            raise bad_value("data.paths", self.paths, "a list of files, folders or globs")
        if self.source == "shakespeare" and self.paths:
            raise bad_value("data.paths", list(self.paths), "[] with source='shakespeare' (the corpus is built in)")
        if self.source in ("text", "memmap") and not self.paths:
            raise bad_value("data.paths", list(self.paths),
                            f"at least one file, folder or glob when data.source={self.source!r}")
        if self.memmap_dtype not in MEMMAP_DTYPES:
            raise bad_value("data.memmap_dtype", self.memmap_dtype, MEMMAP_DTYPES)
        if not self.text_field:
            raise bad_value("data.text_field", self.text_field, "a non-empty JSON key")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise bad_value("data.validation_fraction", self.validation_fraction, "a fraction in [0, 1)")
        if self.seed < 0:
            raise bad_value("data.seed", self.seed, "a non-negative integer")
        if self.trains_tokenizer:
            minimum = BYTE_ALPHABET_SIZE + len(self.tokenizer.special_tokens)
            if self.tokenizer.vocab_size < minimum:
                raise bad_value(
                    "data.tokenizer.vocab_size",
                    self.tokenizer.vocab_size,
                    f"at least {minimum} for a byte-level BPE ({BYTE_ALPHABET_SIZE} bytes + "
                    f"{len(self.tokenizer.special_tokens)} special token)",
                )
        if self.source == "memmap":
            if self.eos_token_id is None and self.tokenizer.path is None:
                raise bad_value(
                    "data.eos_token_id", None, "the id that ends each document (or set data.tokenizer.path)"
                )
            if self.eos_token_id is not None and self.tokenizer.path is None:
                if not 0 <= self.eos_token_id < self.tokenizer.vocab_size:
                    raise bad_value(
                        "data.eos_token_id",
                        self.eos_token_id,
                        f"an id in [0, data.tokenizer.vocab_size={self.tokenizer.vocab_size})",
                    )
            if self.memmap_dtype == "uint16" and self.tokenizer.path is None and self.tokenizer.vocab_size > 2**16:
                raise bad_value(
                    "data.memmap_dtype", self.memmap_dtype, f"'uint32' for vocab_size={self.tokenizer.vocab_size}"
                )
