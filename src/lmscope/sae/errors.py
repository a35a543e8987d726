"""The error type of the sparse-autoencoder package."""

from __future__ import annotations

from lmscope.errors import LmscopeError


class SAEError(LmscopeError, ValueError):
    """Input an SAE cannot take (wrong width, missing target) or an unsupported operation."""
