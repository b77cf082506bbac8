"""One error type with a kind; transports map kinds to their own codes at the edge."""

from __future__ import annotations

import enum


class ErrorKind(enum.StrEnum):
    """What went wrong, independent of the transport that reports it."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"

    @property
    def permanent(self) -> bool:
        """Retrying the same input cannot succeed: dead-letter it instead of redelivering."""
        return self in {ErrorKind.INVALID_ARGUMENT, ErrorKind.NOT_FOUND, ErrorKind.FAILED_PRECONDITION,
                        ErrorKind.ALREADY_EXISTS}


class LooplineError(Exception):
    """A domain error carrying an :class:`ErrorKind` and a human-readable reason."""

    def __init__(self, kind: ErrorKind, message: str, details: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


def invalid(message: str, **details: str) -> LooplineError:
    return LooplineError(ErrorKind.INVALID_ARGUMENT, message, details)


def not_found(message: str) -> LooplineError:
    return LooplineError(ErrorKind.NOT_FOUND, message)


def precondition(message: str) -> LooplineError:
    return LooplineError(ErrorKind.FAILED_PRECONDITION, message)
