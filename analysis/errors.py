"""Errors shown to users: one clear line naming the field, the value and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class AnalysisError(ValueError):
    """The sweep, metric, baseline or an option cannot be analysed as asked."""


def bad_value(field: str, value: Any, allowed: str | Iterable[Any], problem: str = "is invalid") -> AnalysisError:
    """``field=value <problem>; allowed: ...`` on one line (long lists are cut)."""
    if not isinstance(allowed, str):
        items = [repr(a) for a in allowed]
        allowed = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
        allowed = allowed or "(none)"
    return AnalysisError(f"{field}={value!r} {problem}; allowed: {allowed}")
