"""Tokenize a text corpus once into a memmap cache: a flat .npy of token ids plus document offsets.

Layout of ``<cache>/tokens-<key>/``: ``tokens.npy`` (uint16, or uint32 for vocabularies over 65536 ids; every
document followed by EOS), ``doc_offsets.npy`` (int64, n_docs + 1: document i is
``tokens[offsets[i]:offsets[i+1]]``, its EOS included) and ``meta.json`` (names, sizes, ids).
The key hashes the corpus fingerprint and the tokenizer file, so any change to either re-tokenizes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from olmo.data.cache import build_once, read_json, stable_hash, write_json
from olmo.data.sources import Document, TextCorpus
from olmo.data.tokenizer import eos_token_id, load_tokenizer, tokenizer_hash
from olmo.errors import OLMoConfigurationError

ENCODE_BATCH_CHARS = 8 << 20  # characters per encode_batch call: parallel in Rust, bounded memory in Python
COPY_CHUNK_TOKENS = 1 << 24


@dataclass(frozen=True)
class TokenizedCorpus:
    path: Path  # the cache folder
    tokens: np.ndarray  # read-only memmap, uint16 or uint32
    doc_offsets: np.ndarray  # int64, n_docs + 1
    names: list[str]
    eos_token_id: int
    vocab_size: int

    @property
    def num_docs(self) -> int:
        return len(self.doc_offsets) - 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def tokenize_corpus(
    corpus: TextCorpus, tokenizer_path: Path, eos_token: str, cache_root: Path
) -> tuple[TokenizedCorpus, bool]:
    """Return the cached tokenization of `corpus` (building it if needed) and whether this call built it."""
    key = stable_hash("tokens", corpus.fingerprint, tokenizer_hash(tokenizer_path), eos_token)
    final = cache_root / f"tokens-{key}"
    built = build_once(final, lambda tmp: _build(tmp, corpus, tokenizer_path, eos_token))
    return load_tokenized(final), built


def load_tokenized(path: Path) -> TokenizedCorpus:
    meta = read_json(path / "meta.json")
    return TokenizedCorpus(
        path=path,
        tokens=np.load(path / "tokens.npy", mmap_mode="r"),
        doc_offsets=np.load(path / "doc_offsets.npy"),
        names=meta["names"],
        eos_token_id=meta["eos_token_id"],
        vocab_size=meta["vocab_size"],
    )


def _build(tmp: Path, corpus: TextCorpus, tokenizer_path: Path, eos_token: str) -> None:
    tokenizer = load_tokenizer(tokenizer_path)
    eos = eos_token_id(tokenizer, eos_token)
    # A literal "<|endoftext|>" inside a document is text, not a document boundary.
    tokenizer.encode_special_tokens = True
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    names: list[str] = []
    lengths: list[int] = []
    raw = tmp / "tokens.bin"
    with open(raw, "wb") as out:
        for docs in _batches(corpus.documents()):
            encodings = tokenizer.encode_batch([d.text for d in docs], add_special_tokens=False)
            for doc, enc in zip(docs, encodings, strict=True):
                ids = np.asarray(enc.ids + [eos], dtype=dtype)
                out.write(ids.tobytes())
                names.append(doc.name)
                lengths.append(len(ids))
    if not names:
        raise OLMoConfigurationError(f"data.paths: the corpus has no documents (files: {len(corpus.files)}, all empty)")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    _raw_to_npy(raw, tmp / "tokens.npy", dtype, int(offsets[-1]))
    raw.unlink()
    np.save(tmp / "doc_offsets.npy", offsets)
    write_json(
        tmp / "meta.json",
        {
            "names": names,
            "num_tokens": int(offsets[-1]),
            "num_docs": len(names),
            "dtype": dtype.name,
            "eos_token_id": eos,
            "vocab_size": vocab_size,
            "corpus_fingerprint": corpus.fingerprint,
            "tokenizer_file": str(tokenizer_path),
        },
    )


def _batches(docs: Iterator[Document]) -> Iterator[list[Document]]:
    batch: list[Document] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if chars >= ENCODE_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _raw_to_npy(raw: Path, dest: Path, dtype: np.dtype, n: int) -> None:
    """Copy a headerless token file into a .npy (whose header needs the length, known only at the end)."""
    src = np.memmap(raw, dtype=dtype, mode="r", shape=(n,))
    out = np.lib.format.open_memmap(dest, mode="w+", dtype=dtype, shape=(n,))
    for start in range(0, n, COPY_CHUNK_TOKENS):
        out[start : start + COPY_CHUNK_TOKENS] = src[start : start + COPY_CHUNK_TOKENS]
    out.flush()
    del src, out
