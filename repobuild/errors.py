"""Errors users see: one clear line naming the file and the reason, never a traceback.

Exit statuses follow CONTRACT.md: 1 for a verification or validation failure (tampered,
expired, rolled back, untrusted, malformed input), 2 for a usage or configuration error.
"""

from __future__ import annotations


class RepobuildError(Exception):
    """A failure a user should read: ``str(err)`` is the whole message."""

    exit_code = 1

    def __init__(self, message: str, path: object | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ValidationError(RepobuildError):
    """Malformed or refused input (exit 1)."""


class VerificationError(RepobuildError):
    """Tampered, expired, rolled back or untrusted content (exit 1)."""


class UsageError(RepobuildError):
    """A usage or configuration error (exit 2)."""

    exit_code = 2
