"""What the durable broker mode costs: the same aiokafka workload against memory and S3 storage.

    python -m bench broker [--records N] [--size BYTES] [--rounds R]

For each mode in turn (never both at once: they would share the two cores) it brings up its own
local stack (``Stack.up``, timed), then runs R rounds of: N small records produced by one aiokafka
producer (acks=all, linger 5 ms, as the platform's publisher) to a fresh 3-partition topic, timed from
the first send until every ack is in; then the same N read back from the beginning by one consumer,
timed until the last one arrives. Last it times ``stop_broker`` and ``start_broker`` with the data in
place. Rates are the median over the rounds. The figures are printed, not asserted: they describe
this machine (2 cores), not a contract.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from loopline_core.kafka import ensure_topics
from loopline_stack import Stack
from loopline_stack.stack import StackConfig

PARTITIONS = 3


@dataclass
class ModeFigures:
    mode: str
    stack_up_s: float = 0.0
    broker_stop_s: float = 0.0
    broker_start_s: float = 0.0
    produce_rps: list[float] = field(default_factory=list)
    consume_rps: list[float] = field(default_factory=list)

    @property
    def produce(self) -> float:
        return statistics.median(self.produce_rps)

    @property
    def consume(self) -> float:
        return statistics.median(self.consume_rps)


async def _produce(bootstrap: str, topic: str, records: int, size: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        payload = b"x" * size
        started = time.perf_counter()
        acks = [await producer.send(topic, payload) for _ in range(records)]
        await asyncio.gather(*acks)
        return records / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, records: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        started = time.perf_counter()
        # A broker that lost records would leave this waiting: bound it rather than hang the bench.
        async with asyncio.timeout(120):
            while seen < records:
                seen += sum(len(b) for b in (await consumer.getmany(timeout_ms=500, max_records=5000)).values())
        return records / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def _round(bootstrap: str, records: int, size: int) -> tuple[float, float]:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], partitions=PARTITIONS)
    return await _produce(bootstrap, topic, records, size), await _consume(bootstrap, topic, records)


def _measure(mode: str, records: int, size: int, rounds: int, root: Path) -> ModeFigures:
    figures = ModeFigures(mode)
    stack = Stack(StackConfig(state_dir=root / mode, durable=mode == "durable", timeout_s=90))
    started = time.perf_counter()
    state = stack.up()
    figures.stack_up_s = time.perf_counter() - started
    try:
        bootstrap = state.env["LOOPLINE_KAFKA_BOOTSTRAP"]
        for _ in range(rounds):
            produce, consume = asyncio.run(_round(bootstrap, records, size))
            figures.produce_rps.append(produce)
            figures.consume_rps.append(consume)
        started = time.perf_counter()
        stack.stop_broker()
        figures.broker_stop_s = time.perf_counter() - started
        started = time.perf_counter()
        stack.start_broker()  # returns once the broker answers (polled every 0.2 s)
        figures.broker_start_s = time.perf_counter() - started
    finally:
        stack.down()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench broker", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="records per round (default 20000)")
    parser.add_argument("--size", type=int, default=100, help="value size in bytes (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode; rates are the median (default 3)")
    args = parser.parse_args()
    # start_broker polls until the broker answers; aiokafka logs each refused connection meanwhile.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    # Kept when a stack fails to come up: its logs say why. Stack.down removes it otherwise.
    tmp = Path(tempfile.mkdtemp(prefix="loopline-bench-broker-"))
    results = [_measure(mode, args.records, args.size, args.rounds, tmp) for mode in ("memory", "durable")]
    tmp.rmdir()
    print(f"broker modes: {args.records} records of {args.size} B, 3 partitions, median of {args.rounds} rounds")
    print(f"{'mode':<8} {'stack up s':>10} {'broker stop s':>14} {'broker start s':>15} {'produce rec/s':>14} "
          f"{'consume rec/s':>14}")
    for f in results:
        print(f"{f.mode:<8} {f.stack_up_s:>10.1f} {f.broker_stop_s:>14.2f} {f.broker_start_s:>15.2f} "
              f"{f.produce:>14,.0f} {f.consume:>14,.0f}")
    memory, durable = results
    print(f"durable / memory: produce {durable.produce / memory.produce:.2f}x, "
          f"consume {durable.consume / memory.consume:.2f}x, stack up {durable.stack_up_s / memory.stack_up_s:.2f}x")
    for f in results:
        rounds = ", ".join(f"{p:,.0f}/{c:,.0f}" for p, c in zip(f.produce_rps, f.consume_rps, strict=True))
        print(f"  {f.mode} rounds (produce/consume rec/s): {rounds}")


if __name__ == "__main__":
    main()
