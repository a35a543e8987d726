"""The error generation raises for bad arguments."""

from __future__ import annotations

from lmscope.errors import LmscopeError


class GenerationError(LmscopeError, ValueError):
    """Invalid generation input: prompts, lengths, sampling settings or token ids."""
