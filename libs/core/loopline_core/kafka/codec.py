"""Decoders from Kafka records to protobuf messages, with the fields a handler cannot do without."""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from loopline_core.errors import invalid
from loopline_core.kafka.records import Record

M = TypeVar("M", bound=Message)


def proto(message_type: type[M], *required: str) -> Callable[[Record], M]:
    """Parse records as ``message_type``; a record that does not parse, or leaves one of the
    ``required`` (dotted) fields empty, is refused with the reason and goes to the dead-letter topic."""
    name = message_type.DESCRIPTOR.full_name

    def decode(record: Record) -> M:
        msg = message_type()
        try:
            msg.ParseFromString(record.value)
        except DecodeError as exc:
            raise invalid(f"undecodable: not a {name} ({exc})") from exc
        for path in required:
            value: Any = reduce(getattr, path.split("."), msg)
            if not value:
                raise invalid(f"{name} needs {path}")
        return msg

    return decode
