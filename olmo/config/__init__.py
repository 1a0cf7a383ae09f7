"""The schema: dataclasses for every configurable part, validated with one-line errors."""

from olmo.config.model import ModelConfig

__all__ = ["ModelConfig"]
