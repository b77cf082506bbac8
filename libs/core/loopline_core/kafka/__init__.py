"""The Kafka bus: topic names, an at-least-once consumer with a dead-letter path, a traced publisher."""

from loopline_core.kafka.bus import Consumer, Publisher, Record, ensure_topics
from loopline_core.kafka.topics import TopicNamer

__all__ = ["Consumer", "Publisher", "Record", "TopicNamer", "ensure_topics"]
