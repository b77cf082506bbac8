"""The peer of the pipeline benchmark: the least a Python service on aiokafka can do per record.

One process, one loop: ``getmany`` -> ``json.loads`` -> ``json.dumps`` -> produce to the output
topic -> wait for the acknowledgements -> commit the batch. The same at-least-once order as the
platform's bus (output acknowledged before the input offset is committed) and the same client
settings (batches of 500, fetch wait 100 ms, acks=all, linger 5 ms), none of its features (no
envelope, no dedupe, no contract, no tracing, no metrics).

    python -m bench.bare_loop BOOTSTRAP SOURCE_TOPIC DEST_TOPIC GROUP

Prints ``ready`` once partitions are assigned; stops on SIGTERM/SIGINT after the batch in hand.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def run(bootstrap: str, source: str, dest: str, group: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=group, client_id="bare-loop",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
                                fetch_max_wait_ms=100)  # as the platform's bus (aiokafka's default is 500)
    # Same producer settings as the platform's Publisher (acks=all, linger 5 ms, no idempotence on Tansu).
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="bare-loop", acks="all", linger_ms=5,
                                enable_idempotence=False)
    await consumer.start()
    await producer.start()
    announced = False
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            if not announced and consumer.assignment():
                print("ready", flush=True)
                announced = True
            if not batches:
                continue
            pending = []
            offsets = {}
            for tp, records in batches.items():
                for rec in records:
                    out = json.dumps(json.loads(rec.value)).encode()
                    pending.append(await producer.send(dest, out, key=rec.key))
                offsets[tp] = records[-1].offset + 1
            await asyncio.gather(*pending)
            await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit("usage: python -m bench.bare_loop BOOTSTRAP SOURCE_TOPIC DEST_TOPIC GROUP")
    asyncio.run(run(*sys.argv[1:5]))


if __name__ == "__main__":
    main()
