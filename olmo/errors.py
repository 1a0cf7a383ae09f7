"""Errors shown to users: one clear line naming the field, the bad value and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class OLMoConfigurationError(ValueError):
    """A configuration value is invalid or inconsistent with another one."""


def bad_value(field: str, value: Any, allowed: str | Iterable[Any]) -> OLMoConfigurationError:
    """Build the standard one-line error: ``field=value is invalid; allowed: ...``."""
    if not isinstance(allowed, str):
        allowed = ", ".join(repr(a) for a in allowed)
    return OLMoConfigurationError(f"{field}={value!r} is invalid; allowed: {allowed}")
