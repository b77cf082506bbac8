"""The Kafka bus: topic names, FastStream batch subscribers with Loopline's delivery contract, a publisher."""

from loopline_core.kafka.bus import Bus, ensure_topics
from loopline_core.kafka.delivery import Item, PartialFailure, RetryPolicy, each
from loopline_core.kafka.publisher import Publisher
from loopline_core.kafka.records import Record
from loopline_core.kafka.topics import TopicNamer

__all__ = ["Bus", "Item", "PartialFailure", "Publisher", "Record", "RetryPolicy", "TopicNamer", "each",
           "ensure_topics"]
