"""Error types that lmscope raises for bad input.

Every error names what was wrong and what is allowed, so the CLI can print it as one
clear line instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LmscopeError(Exception):
    """Base class of every error lmscope raises on purpose."""


class ConfigError(LmscopeError, ValueError):
    """An invalid `ModelConfig` field, value or combination of values."""

    def __init__(
        self, field: str, value: object, allowed: str, hint: str = "", owner: str = "ModelConfig"
    ) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        message = f"{owner}.{field} = {value!r} is invalid: {allowed}"
        if hint:
            message += f" {hint}"
        super().__init__(message)

    @classmethod
    def about(cls, source: str, problem: str) -> ConfigError:
        """An error about a whole config source (a file, JSON text), not one field."""
        error = cls.__new__(cls)
        error.field, error.value, error.allowed = "<source>", source, problem
        ValueError.__init__(error, f"config {source}: {problem}")
        return error


class CheckpointError(LmscopeError, ValueError):
    """A checkpoint that does not match the model it is loaded into."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``"Did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"Did you mean {close[0]!r}?" if close else ""
