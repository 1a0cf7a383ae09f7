"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
    """One tokenized-corpus cache for the whole session, so Shakespeare is tokenized once."""
    return str(tmp_path_factory.mktemp("data-cache"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run tiny models on one intra-op thread: faster than two, and immune to a busy neighbour's cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
