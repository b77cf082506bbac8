"""One error type with a kind; transports map kinds to their own codes at the edge."""

from __future__ import annotations

import enum


class ErrorKind(enum.StrEnum):
    """What went wrong, independent of the transport that reports it."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    # A compare-and-set lost: someone else changed the thing first. Re-read and decide again.
    ABORTED = "ABORTED"
    # A bounded queue is full: back off and retry (not the input's fault).
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    # The caller's deadline passed before the work ran; it was dropped, not done.
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
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


def aborted(message: str, **details: str) -> LooplineError:
    return LooplineError(ErrorKind.ABORTED, message, details)


# What a record's own content can raise when code reads it: retrying the same bytes cannot help.
_CONTENT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, OverflowError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError, RecursionError,
    UnicodeError, LookupError,
)


def is_permanent(exc: BaseException) -> bool:
    """True when retrying the same input cannot succeed (dead-letter it), False when a dependency failed.

    Loopline errors say so by their kind. gRPC statuses are mapped like the kinds. Driver errors that
    mean "the other side is down or slow" (connections, timeouts, Kafka and Postgres availability)
    are transient. Errors a record's content raises in plain code (``ValueError``, ``OverflowError``,
    ``TypeError``, ``KeyError`` ...) and protobuf decode errors are permanent. Anything else is
    treated as transient: it is retried within the retry budget and then dead-lettered as exhausted,
    so a misclassified error still cannot hold a partition.
    """
    if isinstance(exc, LooplineError):
        return exc.kind.permanent
    code = _grpc_code(exc)
    if code is not None:
        return code in {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "ALREADY_EXISTS", "OUT_OF_RANGE",
                        "UNIMPLEMENTED", "PERMISSION_DENIED", "UNAUTHENTICATED"}
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return False
    if type(exc).__module__.startswith(("aiokafka", "asyncpg")):
        return _driver_permanent(exc)
    if type(exc).__name__ == "DecodeError" and type(exc).__module__.startswith("google.protobuf"):
        return True
    return isinstance(exc, _CONTENT_ERRORS)


def _grpc_code(exc: BaseException) -> str | None:
    code = getattr(exc, "code", None)
    if type(exc).__module__.startswith("grpc") and callable(code):
        try:
            return str(code().name)
        except Exception:  # noqa: BLE001 - an RpcError without a status is treated as unknown
            return None
    return None


def _driver_permanent(exc: BaseException) -> bool:
    """asyncpg data errors (a value Postgres refuses) are the record's fault; the rest is availability."""
    import asyncpg  # noqa: PLC0415 - only needed when a driver error is being classified

    return isinstance(exc, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError)
