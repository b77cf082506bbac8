"""The peer of the monitor benchmark: the least a Python consumer of predictions on aiokafka can do.

One process, one loop: ``getmany(500)`` -> ``PredictionLogged.FromString`` per record -> commit the
batch. The monitor's consumer settings (batches of 500, fetch wait 100 ms, manual commits after each
batch), none of its work (no dedupe in Postgres, no windows, no evaluations, no outbox, no metrics).

    python -m bench.monitor_bare BOOTSTRAP TOPIC GROUP

Prints ``ready`` once partitions are assigned, and ``committed <epoch s> <records so far>`` after each commit
(the benchmark times it from these lines); stops on SIGTERM/SIGINT after the batch in hand.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from aiokafka import AIOKafkaConsumer
from loopline.inference.v1.events_pb2 import PredictionLogged


async def run(bootstrap: str, topic: str, group: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, client_id="monitor-bare",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
                                fetch_max_wait_ms=100)  # as the platform's bus (aiokafka's default is 500)
    await consumer.start()
    announced = False
    decoded = committed = 0
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            if not announced and consumer.assignment():
                print("ready", flush=True)
                announced = True
            if not batches:
                continue
            offsets = {}
            for tp, records in batches.items():
                for rec in records:
                    # the decode is the one piece of work every consumer of this topic must do
                    decoded += bool(PredictionLogged.FromString(rec.value).model_version)
                offsets[tp] = records[-1].offset + 1
            await consumer.commit(offsets)
            committed += sum(len(records) for records in batches.values())
            # its own stopwatch: it takes a fraction of a second, too short to time from outside by polling
            print(f"committed {time.time():.6f} {committed}", flush=True)
    finally:
        await consumer.stop()
        print(f"decoded {decoded}", flush=True)


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit("usage: python -m bench.monitor_bare BOOTSTRAP TOPIC GROUP")
    asyncio.run(run(*sys.argv[1:4]))


if __name__ == "__main__":
    main()
