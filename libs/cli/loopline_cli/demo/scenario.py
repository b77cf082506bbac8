"""The loop, driven from outside as its users would: traffic in, v1 requested, drift injected,
and then only watching while monitor, retrainer, trainer, registry and inference do the rest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from loopline.trainer.v1.events_pb2 import TrainingRequested
from loopline_core.events import derived_id, metadata
from loopline_core.kafka import Publisher, TopicNamer

from loopline_cli.demo.observe import Observer
from loopline_cli.demo.synth import TransactionStream
from loopline_cli.demo.traffic import Traffic


@dataclass
class ScenarioConfig:
    rate: float = 60.0
    bootstrap_labels: int = 2000
    bootstrap_window_rows: int = 1500
    """v1 learns from the most recent rows only: the first simulated day is a cold start in which
    every customer's 24h aggregates are still filling up, unlike anything served later."""
    scored_before_drift: int = 1200
    scored_after_promotion: int = 800
    """Enough for the monitor to evaluate the new champion's own windows against its own profile."""
    label_delay_s: float = 3.0
    deadline_s: float = 240.0
    seed: int = 7


@dataclass
class ScenarioResult:
    traffic: Traffic
    observer: Observer
    started: float
    drift_at: float | None
    promoted_at: float | None
    final_version: int
    completed: bool


async def run_scenario(bootstrap: str, namer: TopicNamer, feature_addr: str, inference_addr: str,
                       cfg: ScenarioConfig, progress: Callable[[str], None] = lambda _m: None,
                       on_start: Callable[[Traffic, Observer], None] = lambda _t, _o: None) -> ScenarioResult:
    started = time.time()
    deadline = time.monotonic() + cfg.deadline_s
    stream = TransactionStream(seed=cfg.seed)
    traffic = Traffic(bootstrap, namer, feature_addr, inference_addr, stream, rate=cfg.rate,
                      label_delay_s=cfg.label_delay_s)
    observer = Observer(bootstrap, namer)
    on_start(traffic, observer)
    tasks = [asyncio.create_task(traffic.run()), asyncio.create_task(observer.run())]
    drift_at = promoted_at = None
    completed = False

    async def until(cond: Callable[[], bool]) -> bool:
        while not cond():
            if time.monotonic() > deadline or any(t.done() for t in tasks):
                for t in tasks:
                    if t.done() and t.exception():
                        raise t.exception()  # type: ignore[misc]
                return False
            await asyncio.sleep(0.1)
        return True

    try:
        progress("traffic flowing: transactions in, labels arriving later")
        if not await until(lambda: traffic.stats.labels >= cfg.bootstrap_labels):
            return ScenarioResult(traffic, observer, started, None, None, 0, False)
        pub = Publisher(bootstrap, client_id="demo-engineer")
        await pub.start()
        req = TrainingRequested(metadata=metadata("demo", derived_id("bootstrap", namer.prefix, str(started))),
                                model_name="fraud", dataset="transactions", reason="bootstrap: first model",
                                seed=cfg.seed, has_seed=True,
                                params={"window_rows": str(cfg.bootstrap_window_rows)})
        await pub.publish(namer.training_requests(), req.SerializeToString(), key="fraud",
                          message_type="loopline.trainer.v1.TrainingRequested")
        await pub.stop()
        observer.note("requested", f"ML engineer requests v1 after {traffic.stats.labels} labels")
        progress("v1 requested")
        if not await until(lambda: traffic.stats.serving_version >= 1):
            return ScenarioResult(traffic, observer, started, None, None, 0, False)
        progress("v1 is serving")
        base = traffic.stats.by_version[1]
        if not await until(lambda: traffic.stats.by_version[1] - base >= cfg.scored_before_drift):
            return ScenarioResult(traffic, observer, started, None, None, 1, False)
        stream.drifted = True
        drift_at = time.time()
        observer.note("drift", "drift begins: amounts x2.5, a new category, a new fraud pattern")
        progress("drift injected")
        if not await until(lambda: observer.seen.champion >= 2 and traffic.stats.serving_version >= 2):
            return ScenarioResult(traffic, observer, started, drift_at, None, traffic.stats.serving_version, False)
        promoted_at = time.time()
        v = traffic.stats.serving_version
        progress(f"v{v} promoted and serving")
        mark = traffic.stats.by_version[v]
        await until(lambda: traffic.stats.by_version[v] - mark >= cfg.scored_after_promotion)
        traffic.stop()
        await asyncio.gather(tasks[0], return_exceptions=True)
        # The last malformed records are still on their way through ingest: let them land, so the
        # summary counts every dead letter rather than racing the pipeline.
        settle = time.monotonic() + 30.0
        while observer.seen.dead_letters < traffic.stats.malformed and time.monotonic() < settle:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        completed = True
        return ScenarioResult(traffic, observer, started, drift_at, promoted_at, v, completed)
    finally:
        traffic.stop()
        observer.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
