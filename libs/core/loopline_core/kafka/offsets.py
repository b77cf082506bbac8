"""Where a partition's log ends, read so that it holds on every Kafka-protocol broker."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition


async def log_end(consumer: Any, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The offset after the last record of each of ``tps``, as of now (assigns ``tps`` to ``consumer``).

    ``end_offsets`` first; then one fetch from there, whose high watermark wins when greater: the
    local broker (Tansu 0.6) answers ListOffsets "latest" with the first offset of the partition's
    last batch, not the offset after it, so ``end_offsets`` alone misses up to a batch of records.
    """
    consumer.assign(tps)
    ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    for tp in tps:
        consumer.seek(tp, ends[tp])
    while unknown := [tp for tp in tps if consumer.highwater(tp) is None]:
        await consumer.getmany(*unknown, timeout_ms=200)
    return {tp: max(ends[tp], consumer.highwater(tp) or 0) for tp in tps}
