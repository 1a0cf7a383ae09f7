"""Pre-tokenized memmap files, the format OLMo trains from: flat token ids, documents separated by EOS.

A file is either headerless (OLMo's ``.npy`` files are raw ``np.memmap`` dumps; ``data.memmap_dtype`` says
how to read them) or a real ``.npy`` with a header (its dtype wins). Finding the documents needs one scan
for EOS ids; its result (document offsets and the largest id) is cached per file identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from olmo.config.data import MEMMAP_DTYPES
from olmo.data.cache import build_once, file_identity, read_json, stable_hash, write_json
from olmo.errors import OLMoConfigurationError, bad_value

NPY_MAGIC = b"\x93NUMPY"
SCAN_CHUNK_TOKENS = 1 << 24


@dataclass(frozen=True)
class MemmapFile:
    path: Path
    tokens: np.ndarray  # read-only memmap
    doc_offsets: np.ndarray  # int64, n_docs + 1; a trailing piece without EOS counts as a document
    max_token_id: int


def open_token_file(path: Path, dtype_name: str, field: str) -> np.ndarray:
    """Map a token file read-only, with or without a .npy header."""
    with open(path, "rb") as f:
        has_header = f.read(len(NPY_MAGIC)) == NPY_MAGIC
    if has_header:
        tokens = np.load(path, mmap_mode="r")
        if tokens.dtype.name not in MEMMAP_DTYPES or tokens.ndim != 1:
            raise OLMoConfigurationError(
                f"{field}: {path} holds a {tokens.ndim}-D {tokens.dtype.name} array; allowed: a flat 1-D array "
                f"of {' or '.join(MEMMAP_DTYPES)} token ids"
            )
    else:
        dtype = np.dtype(dtype_name)
        size = path.stat().st_size
        if size % dtype.itemsize:
            raise bad_value(
                "data.memmap_dtype", dtype_name, f"a dtype whose item size divides the {size} bytes of {path}"
            )
        if size == 0:
            raise bad_value(field, str(path), "a non-empty token file")
        tokens = np.memmap(path, dtype=dtype, mode="r")
    if len(tokens) == 0:
        raise bad_value(field, str(path), "a non-empty token file")
    return tokens


def index_memmap_file(
    path: Path, dtype_name: str, eos_token_id: int, cache_root: Path, field: str
) -> tuple[MemmapFile, bool]:
    """Open `path` and find its documents (cached); returns the file and whether this call scanned it."""
    tokens = open_token_file(path, dtype_name, field)
    key = stable_hash("memmap-index", file_identity(path), tokens.dtype.name, eos_token_id)
    final = cache_root / f"memmap-index-{key}"

    def build(tmp: Path) -> None:
        ends: list[np.ndarray] = []
        max_id = 0
        for start in range(0, len(tokens), SCAN_CHUNK_TOKENS):
            chunk = np.asarray(tokens[start : start + SCAN_CHUNK_TOKENS])
            ends.append(np.flatnonzero(chunk == eos_token_id) + start + 1)
            max_id = max(max_id, int(chunk.max()))
        doc_ends = np.concatenate(ends).astype(np.int64)
        if len(doc_ends) == 0 or doc_ends[-1] != len(tokens):
            doc_ends = np.append(doc_ends, len(tokens))  # trailing document without a final EOS
        np.save(tmp / "doc_offsets.npy", np.concatenate([[0], doc_ends]).astype(np.int64))
        write_json(tmp / "meta.json", {"max_token_id": max_id, "num_tokens": len(tokens), "file": str(path)})

    built = build_once(final, build)
    meta = read_json(final / "meta.json")
    return MemmapFile(path, tokens, np.load(final / "doc_offsets.npy"), meta["max_token_id"]), built
