"""Hold out whole documents for validation: a seeded, deterministic choice."""

from __future__ import annotations

import numpy as np

from olmo.errors import bad_value

SPLIT_STREAM = 0x5B17  # separates the split's random stream from the batch order's, which also uses the seed


def split_documents(num_docs: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, validation) document indices; round(fraction * num_docs) held out, at least 1 each side.

    fraction = 0 holds out nothing.
    """
    everything = np.arange(num_docs, dtype=np.int64)
    if fraction == 0:
        return everything, everything[:0]
    if num_docs < 2:
        raise bad_value(
            "data.validation_fraction",
            fraction,
            f"0 for a corpus of {num_docs} document(s); holding out whole documents needs at least 2",
        )
    n_val = min(max(1, round(fraction * num_docs)), num_docs - 1)
    rng = np.random.default_rng([seed, SPLIT_STREAM])
    is_val = np.zeros(num_docs, dtype=bool)
    is_val[rng.choice(num_docs, size=n_val, replace=False)] = True
    return everything[~is_val], everything[is_val]
