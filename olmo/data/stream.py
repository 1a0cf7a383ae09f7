"""TokenStream: chosen documents laid end to end, read in windows straight from the memmaps (no copy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class TokenStream:
    """A virtual flat array: documents (each ending in EOS) concatenated in the given order.

    Documents live in one or more memmapped token arrays; document k of the stream is
    ``arrays[doc_array[k]][doc_start[k] : doc_start[k] + doc_len[k]]`` and is document ``doc_ids[k]`` of the
    corpus it came from.
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        doc_array: np.ndarray,
        doc_start: np.ndarray,
        doc_len: np.ndarray,
        doc_ids: np.ndarray,
    ) -> None:
        self.arrays = list(arrays)
        self.doc_array = np.asarray(doc_array, dtype=np.int64)
        self.doc_start = np.asarray(doc_start, dtype=np.int64)
        self.doc_len = np.asarray(doc_len, dtype=np.int64)
        self.doc_ids = np.asarray(doc_ids, dtype=np.int64)
        if len(self.doc_len) and int(self.doc_len.min()) < 1:
            raise ValueError("every document of a TokenStream needs at least one token (its EOS)")
        # cum[k] is where document k starts in the stream; cum[-1] is the total length.
        self.cum = np.zeros(len(self.doc_len) + 1, dtype=np.int64)
        np.cumsum(self.doc_len, out=self.cum[1:])

    @property
    def num_tokens(self) -> int:
        return int(self.cum[-1])

    @property
    def num_docs(self) -> int:
        return len(self.doc_len)

    @property
    def tokens(self) -> np.ndarray:
        """The whole stream as one flat array in the stored dtype.

        A zero-copy view when the documents are one contiguous run of one array (e.g. all of a corpus);
        otherwise a copy, so avoid it on streams larger than memory.
        """
        if self.num_docs == 0:
            return np.zeros(0, dtype=self.arrays[0].dtype if self.arrays else np.int64)
        breaks = _run_breaks(self.doc_array, self.doc_start, self.doc_start + self.doc_len)
        runs = []
        for first, last in zip(np.r_[0, breaks], np.r_[breaks, self.num_docs] - 1, strict=True):
            lo, hi = self.doc_start[first], self.doc_start[last] + self.doc_len[last]
            runs.append(self.arrays[self.doc_array[first]][lo:hi])
        return runs[0] if len(runs) == 1 else np.concatenate(runs)

    def select(self, positions: np.ndarray) -> TokenStream:
        """The stream of this stream's documents at `positions`, in that order."""
        return TokenStream(
            self.arrays, self.doc_array[positions], self.doc_start[positions], self.doc_len[positions],
            self.doc_ids[positions],
        )

    def document(self, k: int) -> np.ndarray:
        """Tokens of the k-th document of the stream (EOS included), as int64."""
        start = self.doc_start[k]
        return np.asarray(self.arrays[self.doc_array[k]][start : start + self.doc_len[k]], dtype=np.int64)

    def read(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens [start, start + length) as int64, and the lengths of the document pieces they contain."""
        end = start + length
        if start < 0 or length < 1 or end > self.num_tokens:
            raise IndexError(f"window [{start}, {end}) outside the stream of {self.num_tokens} tokens")
        first = int(np.searchsorted(self.cum, start, side="right")) - 1
        last = int(np.searchsorted(self.cum, end, side="left")) - 1
        docs = slice(first, last + 1)
        bounds = np.clip(self.cum[first : last + 2], start, end)
        doc_lens = np.diff(bounds)
        src_lo = self.doc_start[docs] + (bounds[:-1] - self.cum[docs])
        src_hi = src_lo + doc_lens
        arrays = self.doc_array[docs]
        # Adjacent pieces that are contiguous in the same array are read with one slice.
        breaks = _run_breaks(arrays, src_lo, src_hi)
        out = np.empty(length, dtype=np.int64)
        pos = 0
        for run in np.split(np.arange(len(doc_lens)), breaks):
            lo, hi = int(src_lo[run[0]]), int(src_hi[run[-1]])
            out[pos : pos + hi - lo] = self.arrays[arrays[run[0]]][lo:hi]
            pos += hi - lo
        return out, doc_lens


def _run_breaks(arrays: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Indices where a new run starts: pieces [lo, hi) of `arrays` not continuing the previous piece."""
    return np.flatnonzero((arrays[1:] != arrays[:-1]) | (lo[1:] != hi[:-1])) + 1
