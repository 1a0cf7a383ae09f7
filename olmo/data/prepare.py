"""prepare_data: config -> tokenizer + cached token memmaps + train/validation streams."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from olmo.config.data import DataConfig
from olmo.data.batches import TrainBatches, ValidationBatches
from olmo.data.memmap import index_memmap_file
from olmo.data.sources import resolve_paths, shakespeare_corpus, text_corpus
from olmo.data.split import split_documents
from olmo.data.stream import TokenStream
from olmo.data.token_cache import tokenize_corpus
from olmo.data.tokenizer import eos_token_id, load_tokenizer, train_tokenizer
from olmo.errors import bad_value

MEMMAP_SUFFIXES = (".npy",)


@dataclass
class PreparedData:
    config: DataConfig
    tokenizer: Tokenizer | None  # None for memmap data without data.tokenizer.path
    vocab_size: int  # ids are < vocab_size; the model's vocab_size must be at least this
    eos_token_id: int
    corpus: TokenStream  # every document, in corpus order
    train: TokenStream
    validation: TokenStream  # empty when data.validation_fraction = 0
    cache_dir: Path  # the cache root used
    doc_names: list[str] | None  # one per corpus document (None for memmap files)
    built: list[str] = field(default_factory=list)  # cache entries this call built (empty: all reused)
    seconds: float = 0.0  # time prepare_data took

    def train_batches(
        self, seq_len: int, global_batch_size: int, seed: int | None = None, rank: int = 0, world_size: int = 1
    ) -> TrainBatches:
        """Training batches; `seed` defaults to data.seed."""
        seed = self.config.seed if seed is None else seed
        return TrainBatches(self.train, seq_len, global_batch_size, seed=seed, rank=rank, world_size=world_size)

    def validation_batches(
        self, seq_len: int, batch_size: int, rank: int = 0, world_size: int = 1, max_batches: int | None = None
    ) -> ValidationBatches:
        """The fixed validation batches (empty only when data.validation_fraction = 0)."""
        batches = ValidationBatches(self.validation, seq_len, batch_size, rank, world_size, max_batches)
        if self.validation.num_docs and batches.num_instances < batch_size:
            raise bad_value(
                "data.validation_fraction",
                self.config.validation_fraction,
                f"a fraction that holds out at least batch_size * seq_len = {batch_size * seq_len} tokens "
                f"(it holds out {self.validation.num_tokens}); or lower the validation batch size",
            )
        return batches

    def decode(self, ids: list[int] | np.ndarray) -> str:
        if self.tokenizer is None:
            raise ValueError("no tokenizer to decode with; set data.tokenizer.path for memmap data")
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Validate, then get (from the cache, or by building it once) everything training needs."""
    start = time.perf_counter()
    cfg.validate()
    cache_root = cfg.resolved_cache_dir() / "data"
    built: list[str] = []
    tokenizer: Tokenizer | None = None
    doc_names: list[str] | None = None

    if cfg.source == "memmap":
        files = resolve_paths("data.paths", cfg.paths, MEMMAP_SUFFIXES)  # check paths before any work
        if cfg.tokenizer.path is not None:
            tokenizer = load_tokenizer(cfg.tokenizer.path)
            vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
            eos = eos_token_id(tokenizer, cfg.tokenizer.eos_token) if cfg.eos_token_id is None else cfg.eos_token_id
        else:
            vocab_size = cfg.tokenizer.vocab_size
            assert cfg.eos_token_id is not None  # DataConfig.validate insists
            eos = cfg.eos_token_id
        corpus = _memmap_corpus(cfg, files, vocab_size, eos, cache_root, built)
    else:
        text = shakespeare_corpus() if cfg.source == "shakespeare" else text_corpus(cfg.paths, cfg.text_field)
        if cfg.tokenizer.path is not None:
            tokenizer_path = Path(cfg.tokenizer.path).expanduser()
            load_tokenizer(tokenizer_path)  # fail on a bad file before tokenizing
        else:
            tokenizer_path, fresh = train_tokenizer(text, cfg.tokenizer, cache_root)
            if fresh:
                built.append(tokenizer_path.parent.name)
        tokenized, fresh = tokenize_corpus(text, tokenizer_path, cfg.tokenizer.eos_token, cache_root)
        if fresh:
            built.append(tokenized.path.name)
        tokenizer = load_tokenizer(tokenizer_path)
        vocab_size, eos, doc_names = tokenized.vocab_size, tokenized.eos_token_id, tokenized.names
        offsets = tokenized.doc_offsets
        n = len(offsets) - 1
        corpus = TokenStream([tokenized.tokens], np.zeros(n), offsets[:-1], np.diff(offsets), np.arange(n))

    train_ids, val_ids = split_documents(corpus.num_docs, cfg.validation_fraction, cfg.seed)
    return PreparedData(
        config=cfg,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        eos_token_id=eos,
        corpus=corpus,
        train=corpus.select(train_ids),
        validation=corpus.select(val_ids),
        cache_dir=cfg.resolved_cache_dir(),
        doc_names=doc_names,
        built=built,
        seconds=time.perf_counter() - start,
    )


def _memmap_corpus(
    cfg: DataConfig, files: list[Path], vocab_size: int, eos: int, cache_root: Path, built: list[str]
) -> TokenStream:
    if not 0 <= eos < vocab_size:
        raise bad_value("data.eos_token_id", eos, f"an id in [0, vocab_size={vocab_size})")
    arrays, doc_array, doc_start, doc_len = [], [], [], []
    for i, path in enumerate(files):
        f, fresh = index_memmap_file(path, cfg.memmap_dtype, eos, cache_root, f"data.paths[{i}]")
        if fresh:
            built.append(f"memmap-index of {path.name}")
        if f.max_token_id >= vocab_size:
            raise bad_value(
                "data.tokenizer.vocab_size",
                vocab_size,
                f"more than the largest token id {f.max_token_id} in {path}",
            )
        arrays.append(f.tokens)
        doc_array.append(np.full(len(f.doc_offsets) - 1, i, dtype=np.int64))
        doc_start.append(f.doc_offsets[:-1])
        doc_len.append(np.diff(f.doc_offsets))
    n = sum(len(a) for a in doc_array)
    return TokenStream(
        arrays, np.concatenate(doc_array), np.concatenate(doc_start), np.concatenate(doc_len), np.arange(n)
    )
