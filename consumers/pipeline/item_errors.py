"""Typed per-item failures: each becomes an error ``TaskResult``, never a crashed batch."""

from __future__ import annotations

from schemas.events import ErrorCode


class ItemError(Exception):
    """One event cannot be processed; the code goes into its result."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ModelLoadError(RuntimeError):
    """A model cannot be loaded; the message is one line naming it and how to provide it."""


class ConfigError(ValueError):
    """Settings that must not run (a gateway open to a network without keys); one line."""
