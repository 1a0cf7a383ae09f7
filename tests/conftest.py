"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
    """One tokenized-corpus cache for the whole session, so Shakespeare is tokenized once."""
    return str(tmp_path_factory.mktemp("data-cache"))
