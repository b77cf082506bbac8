"""The test helpers' topic reader sees a topic created after it started waiting (a dead-letter topic is made by
its first dead letter, which may come after a test began to read it)."""

from __future__ import annotations

import asyncio
import uuid

from loopline_core.kafka import Publisher
from loopline_testing.builders import read_topic


async def test_read_topic_waits_for_a_topic_created_later(bootstrap: str, publisher: Publisher) -> None:
    topic = f"late-{uuid.uuid4().hex[:8]}"
    reader = asyncio.create_task(read_topic(bootstrap, topic, 1, timeout=45))
    await asyncio.sleep(2)  # the reader has started and found no such topic
    assert not reader.done()
    await publisher.publish(topic, b"first", key="k")  # the broker creates the topic now
    records = await reader
    assert [r.value for r in records] == [b"first"]
