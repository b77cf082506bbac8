"""The local stack: a Kafka-protocol broker, PostgreSQL and an S3 store started from PyPI packages."""

from loopline_stack.stack import Stack, StackError, StackState

__all__ = ["Stack", "StackError", "StackState"]
