"""``loopline retrain history <model>``: the retraining policy's decisions, newest first.

The retrainer publishes every decision (requested, waiting, skipped and why) as a ``RetrainDecided`` on
the model events topic, keyed by model name; this reads that topic from its start to its end as of now
and keeps those records of the model. Like ``loopline dlq``, only ``LOOPLINE_KAFKA_BOOTSTRAP`` and
``LOOPLINE_TOPIC_PREFIX`` are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError
from loopline.retrainer.v1.events_pb2 import RetrainDecided
from loopline_core.kafka.offsets import log_end
from loopline_core.kafka.records import MESSAGE_TYPE
from loopline_core.kafka.topics import TopicNamer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loopline_cli.dlq import DlqError, DlqSettings, _quiet_client_logs, _settings

retrain_app = typer.Typer(help="The retraining policy: its decisions (requested, waiting, skipped and why).",
                          no_args_is_help=True)
DECIDED = RetrainDecided.DESCRIPTOR.full_name


async def read_decisions(settings: DlqSettings, model: str) -> list[tuple[int, RetrainDecided]]:
    """(record timestamp in ms, decision) of ``model``, oldest first, from the model events topic (in log
    order: the retrainer keys them by model, so one model's decisions share a partition)."""
    topic = TopicNamer(settings.topic_prefix).model_events()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            raise DlqError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        begin, end = await consumer.beginning_offsets(tps), await log_end(consumer, tps)
        out: list[tuple[int, int, int, RetrainDecided]] = []
        for tp in tps:
            consumer.seek(tp, begin[tp])
            while await consumer.position(tp) < end[tp]:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=1000)
                for r in batch.get(tp, []):
                    if r.offset >= end[tp] or dict(r.headers or ()).get(MESSAGE_TYPE, b"").decode() != DECIDED:
                        continue
                    if r.key is not None and r.key.decode("utf-8", "replace") != model:
                        continue
                    try:
                        msg = RetrainDecided.FromString(r.value or b"")
                    except DecodeError:
                        continue
                    if msg.model_name == model:
                        out.append((r.partition, r.offset, r.timestamp, msg))
        out.sort(key=lambda t: (t[0], t[1]))
        return [(ts, msg) for _, _, ts, msg in out]
    finally:
        await consumer.stop()


def _row(ts_ms: int, d: RetrainDecided) -> dict[str, Any]:
    evidence: Any = d.evidence
    with contextlib.suppress(ValueError):  # evidence is JSON by contract; shown as text when it is not
        evidence = json.loads(d.evidence) if d.evidence else {}
    at = d.metadata.occurred_at.ToJsonString() if d.metadata.HasField("occurred_at") else ""
    return {"at": at, "published_ms": ts_ms, "decision": d.decision,
            "trigger": d.trigger, "reason": d.reason, "mode": d.mode,
            "window_start": d.window_start.ToJsonString() if d.HasField("window_start") else "",
            "cause_event_id": d.cause_event_id, "request_id": d.request_id, "evidence": evidence,
            "event_id": d.metadata.event_id}


STYLE = {"requested": "green", "waiting": "yellow", "skipped": "dim"}


@retrain_app.command("history")
def history(model: Annotated[str, typer.Argument(help="the model, e.g. fraud")],
            limit: Annotated[int, typer.Option(min=1, help="show at most this many, newest first")] = 50,
            as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
            timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 30.0) -> None:
    """Every retraining decision for MODEL, newest first: requested, waiting (for labels) or skipped, and why."""
    bootstrap = "?"
    message = ""
    try:
        settings = _settings()
        bootstrap = settings.kafka_bootstrap
        with _quiet_client_logs():
            found = asyncio.run(asyncio.wait_for(read_decisions(settings, model), timeout))
    except DlqError as exc:
        message = str(exc)
    except TimeoutError:
        message = f"no answer from the broker at {bootstrap} within {timeout:g}s"
    except (KafkaError, OSError) as exc:
        message = f"broker at {bootstrap} unreachable ({type(exc).__name__})"
    if message:
        Console(stderr=True).print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
        raise typer.Exit(1)
    rows = [_row(ts, d) for ts, d in reversed(found)][:limit]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        Console().print(f"no retraining decisions for {model}")
        return
    table = Table("at", "decision", "trigger", "reason", "mode", "window start", "cause", "request",
                  title=f"retraining decisions for {model} (newest first)")
    for r in rows:
        table.add_row(r["at"], Text(r["decision"], style=STYLE.get(r["decision"], "")), r["trigger"], r["reason"],
                      r["mode"], r["window_start"], r["cause_event_id"], r["request_id"])
    Console(width=200).print(table)
