"""The user-input error type, in a module with no heavy imports (the CLI loads it first)."""

from __future__ import annotations

__all__ = ["GradTuneInputError"]


class GradTuneInputError(ValueError):
    """Raised when user input is malformed; the message says what and how to fix it."""
