"""The monitor watching an LLM, as its own process against the real broker and Postgres: synthetic
``Generation`` and ``Feedback`` events published as inference and a rating client would (no vLLM needed).

One monitor for the module's scenarios: a stable stream of billing questions (no text-drift alert), a topic
shift to shipping questions (one text_drift episode), a refusal spike (refusal_rate), spend crossing the
budget (budget), feedback joined from either side (a redelivery counted once, the unmatched dead-lettered),
and the preference export checked row by row. Plus the pure pieces (pairs, budgets).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import numpy as np
import pyarrow.parquet as pq
import pytest
from loopline.llm.v1.events_pb2 import Feedback, Generation, GuardrailHit
from loopline.monitor.v1.events_pb2 import AlertRaised, WindowEvaluated
from loopline_cli.preferences import export_preferences, manifest_path, pairs, write_preferences
from loopline_core.events import metadata
from loopline_core.kafka import Publisher, Record, TopicNamer
from loopline_core.kafka.records import DLQ_REASON, MESSAGE_TYPE
from loopline_monitor.domain.llm import (
    Budget,
    GenRow,
    LlmLimits,
    Spend,
    TextWindow,
    budget_finding,
    evaluate_text_window,
)
from loopline_monitor.domain.windows import Spec
from loopline_stack.services import ServiceSet
from loopline_testing.builders import quiet

MODEL = "tiny-llama"
ENV = {"LOOPLINE_MONITOR_LLM_MODELS": f'["{MODEL}"]', "LOOPLINE_MONITOR_MODELS": "[]",
       "LOOPLINE_MONITOR_TEXT_REFERENCE": "100",
       "LOOPLINE_MONITOR_TEXT_WINDOWS": '["count:100/50"]', "LOOPLINE_MONITOR_REPEAT_S": "3600",
       "LOOPLINE_MONITOR_LLM_BUDGETS": json.dumps({MODEL: {"window_s": 3600, "limit": 1.0, "currency": "USD"}}),
       "LOOPLINE_MONITOR_FEEDBACK_TTL_S": "30", "LOOPLINE_MONITOR_LABEL_SWEEP_S": "1",
       "LOOPLINE_REGISTRY_ADDR": "127.0.0.1:9"}  # the LLM watch never asks the registry (lazy channel)

BILLING = ["Why was I charged twice for my {m} invoice?", "Can you refund the duplicate payment on my card?",
           "My {m} bill shows a fee I do not recognise, please explain it.",
           "How do I update the credit card used for my subscription?",
           "I was billed after cancelling in {m}, I want my money back.",
           "What is the late payment fee on invoice {n}?", "Please send me a receipt for my {m} payment.",
           "Why did my monthly subscription price go up this {m}?"]
SHIPPING = ["Where is my parcel? The tracking number {n} has not moved.", "My package was delivered to the wrong "
            "address in {m}.", "How long does express shipping take to reach my town?",
            "The courier left my order at the door and it was stolen.", "Can I change the delivery date of "
            "order {n}?", "My box arrived damaged, the items inside are broken.",
            "Do you ship to Canada, and what are the delivery costs?", "The driver never came for the pickup in {m}."]
MONTHS = ["January", "March", "May", "July", "September", "November"]


def _texts(rng: np.random.Generator, pool: list[str], n: int) -> list[str]:
    return [pool[rng.integers(len(pool))].format(m=MONTHS[rng.integers(len(MONTHS))], n=int(rng.integers(1000, 99999)))
            for _ in range(n)]


class Feed:
    def __init__(self, publisher: Publisher, namer: TopicNamer) -> None:
        self.publisher = publisher
        self.namer = namer

    async def generations(self, rng: np.random.Generator, version: int, texts: list[str], first: int, *,
                          refused: float = 0.0, cost: float = 0.0005, same: dict[int, str] | None = None) -> None:
        for i, given in enumerate(texts):
            k = first + i
            text = (same or {}).get(k, given)
            ref = bool(rng.random() < refused)
            tokens = 6 if ref else int(rng.integers(12, 40))
            g = Generation(metadata=metadata("test", f"g-{version}-{k}", occurred_at=time.time()),
                           request_id=f"r-{version}-{k}", model_name=MODEL, model_version=version, variant="vllm",
                           prompt_name="support", prompt_version=1, input_text=text,
                           output_text="I cannot help with that." if ref else f"Answer {k} to: {text[:20]}",
                           prompt_tokens=20, completion_tokens=tokens, cost=cost, currency="USD",
                           latency_ms=tokens * 4.0, ttft_ms=8.0, finish_reason="stop", refused=ref, outcome="ok",
                           api="openai.chat",
                           guardrails=[GuardrailHit(stage="refusal", rule="refusal", action="flag")] if ref else [])
            await self.publisher.publish(self.namer.generations(MODEL), g.SerializeToString(), key=g.request_id)

    async def feedback(self, event_id: str, request_id: str, kind: str, score: float = 0.0,
                       correction: str = "") -> None:
        f = Feedback(metadata=metadata("test", event_id), request_id=request_id, model_name=MODEL, kind=kind,
                     score=score, correction=correction, rater="tester")
        await self.publisher.publish(self.namer.feedback(MODEL), f.SerializeToString(), key=request_id)


async def _settled(isolated: dict[str, str], topic: str) -> list[Record]:
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    settled = {namer.group("monitor-generations"): [namer.generations(MODEL)],
               namer.group("monitor-feedback"): [namer.feedback(MODEL)]}
    return await quiet(isolated["LOOPLINE_KAFKA_BOOTSTRAP"], topic, 0, wait_s=0, settled=settled, timeout=180)


async def _alerts(isolated: dict[str, str]) -> list[AlertRaised]:
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    return [AlertRaised.FromString(r.value) for r in await _settled(isolated, namer.alerts())
            if r.header(MESSAGE_TYPE) == AlertRaised.DESCRIPTOR.full_name]


async def _windows(isolated: dict[str, str], version: int) -> list[WindowEvaluated]:
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    out = [WindowEvaluated.FromString(r.value) for r in await _settled(isolated, namer.evaluations())]
    return [w for w in out if w.model_version == version and w.window.startswith("text:")]


async def test_llm_text_drift_quality_budget_feedback_and_export(  # noqa: PLR0915 - one monitor, one story
        isolated: dict[str, str], services: Callable[..., ServiceSet], publisher: Publisher, tmp_path: Path) -> None:
    mon = services("monitor", env={"monitor": ENV})
    namer = TopicNamer(isolated["LOOPLINE_TOPIC_PREFIX"])
    feed = Feed(publisher, namer)
    rng = np.random.default_rng(11)

    # feedback that comes before its generation (joined when it arrives), and one whose generation never comes
    await feed.feedback("f-early", "r-1-5", "thumbs", 1.0)
    await feed.feedback("f-orphan", "r-never", "thumbs", -1.0)

    # v1, stable: 100 reference + 300 billing questions; pairs planted on identical inputs
    same = {10: "Why was I charged twice for my May invoice?", 11: "Why was I charged twice for my May invoice?",
            20: "What is the late payment fee on invoice 4242?", 21: "What is the late payment fee on invoice 4242?"}
    billing = _texts(rng, BILLING, 400)
    await feed.generations(rng, 1, billing, 0, same=same)
    await feed.feedback("f-up", "r-1-10", "thumbs", 1.0)
    await feed.feedback("f-down", "r-1-11", "thumbs", -1.0)
    await feed.feedback("f-down", "r-1-11", "thumbs", -1.0)  # redelivered: counted once
    await feed.feedback("f-high", "r-1-20", "score", 0.9)
    await feed.feedback("f-low", "r-1-21", "score", 0.1)
    # a person's correction carries an e-mail and a card number: redacted before it is stored or exported
    await feed.feedback("f-fix", "r-1-30", "correction",
                        correction="Refunds take 5 days; write to jane.doe@example.com, card 4111 1111 1111 1111.")
    assert await _alerts(isolated) == [], "a stable stream of one topic raises nothing"
    stable = await _windows(isolated, 1)
    assert len(stable) == 5 and all(w.window == "text:count:100/50" and w.window_size == 100 for w in stable)
    # p is about uniform without drift: not three of five windows below 5 % (0.1 % by chance)
    assert sum(w.metrics["mmd_p_value"] < 0.05 for w in stable) < 3, [w.metrics["mmd_p_value"] for w in stable]

    # a restart: the reference and windows come back from Postgres (embeddings stored, nothing re-embedded
    # differently); the last 50 generations redelivered change nothing; records that do not decode are dead letters
    mon.stop()
    mon = services("monitor", env={"monitor": ENV})
    await feed.generations(rng, 1, billing[350:], 350)
    await publisher.publish(namer.generations(MODEL), b"\xff not a generation", key="junk")
    await feed.feedback("f-bad-kind", "r-1-12", "stars", 5.0)

    # the topic moves: shipping questions instead of billing ones
    await feed.generations(rng, 1, _texts(rng, SHIPPING, 200), 400)
    drift = [a for a in await _alerts(isolated) if a.kind == "text_drift"]
    assert len({a.episode_id for a in drift}) == 1 and drift[0].model_version == 1, drift
    a = drift[0]
    assert a.metric == "mmd_p_value" and a.value < 0.01 and a.metrics["centroid_distance"] > 0.05
    windows = await _windows(isolated, 1)
    assert all(w.metrics["mmd_p_value"] < 0.01 for w in windows[-2:]), "the windows of shipping questions drifted"
    assert len(windows) == 9 and len({w.metadata.event_id for w in windows}) == 9, \
        "evaluated at 200, 250, ... 600 generations: none twice across the restart, none missed"
    assert windows[:5] == stable
    junk = await quiet(isolated["LOOPLINE_KAFKA_BOOTSTRAP"], namer.dead_letter_for(namer.generations(MODEL)), 1)
    bad_kind = await quiet(isolated["LOOPLINE_KAFKA_BOOTSTRAP"], namer.dead_letter_for(namer.feedback(MODEL)), 1)
    assert "undecodable" in (junk[0].header(DLQ_REASON) or "") and "stars" in (bad_kind[0].header(DLQ_REASON) or "")

    # v2: refusals spike after its reference
    await feed.generations(rng, 2, _texts(rng, BILLING, 100), 0)
    await feed.generations(rng, 2, _texts(rng, BILLING, 150), 100, refused=0.6)
    v2 = [x for x in await _alerts(isolated) if x.model_version == 2]
    refusals = [x for x in v2 if x.kind == "refusal_rate"]
    assert len(refusals) == 1 and refusals[0].severity == "critical" and refusals[0].value >= 0.3
    assert "text_drift" not in {x.kind for x in v2}, "the same topic: no text drift on v2"

    # spend: 850 x 0.0005 = 0.425 USD so far; six expensive calls cross the 1 USD budget
    assert [x for x in await _alerts(isolated) if x.kind == "budget"] == []
    await feed.generations(rng, 3, _texts(rng, BILLING, 6), 0, cost=0.1)
    budget = [x for x in await _alerts(isolated) if x.kind == "budget"]
    assert budget and budget[-1].severity == "critical" and budget[-1].value == pytest.approx(1.025)
    assert budget[0].model_version == 0 and "1.025 USD of 1" in budget[-1].summary

    # feedback: stored once by event id, joined from either side; the orphan is dead-lettered with the reason
    conn = await asyncpg.connect(isolated["LOOPLINE_POSTGRES_DSN"])
    try:
        rows = {r["event_id"]: r for r in await conn.fetch(
            "select f.event_id, g.request_id, f.dead from monitor.feedback f "
            "left join monitor.generations g on g.seq = f.generation_seq")}
    finally:
        await conn.close()
    assert set(rows) == {"f-early", "f-orphan", "f-up", "f-down", "f-high", "f-low", "f-fix"}
    assert rows["f-early"]["request_id"] == "r-1-5", "feedback that came first joined its generation"
    assert rows["f-orphan"]["request_id"] is None
    dead: list[Record] = []
    deadline = time.monotonic() + 60
    while not dead and time.monotonic() < deadline:
        dead = [r for r in await quiet(isolated["LOOPLINE_KAFKA_BOOTSTRAP"],
                                       namer.dead_letter_for(namer.feedback(MODEL)), 0, wait_s=1)
                if "r-never" in (r.header(DLQ_REASON) or "")]
    assert dead and "no generation" in (dead[0].header(DLQ_REASON) or "")
    assert Feedback.FromString(dead[0].value).metadata.event_id == "f-orphan", "its original bytes"

    # the preference export, row by row
    out = tmp_path / "prefs.parquet"
    manifest = await asyncio.to_thread(export_preferences, MODEL, out, dsn=isolated["LOOPLINE_POSTGRES_DSN"])
    table = pq.read_table(out).to_pylist()
    assert [(r["source"], r["chosen_request_id"], r["rejected_request_id"]) for r in table] == [
        ("correction", "r-1-30", "r-1-30"), ("score", "r-1-20", "r-1-21"), ("thumbs", "r-1-10", "r-1-11")]
    fix, score, thumbs = table
    assert fix["chosen"] == "Refunds take 5 days; write to <EMAIL_ADDRESS>, card <CREDIT_CARD>."
    assert fix["rejected"].startswith("Answer 30 ")
    assert b"jane.doe" not in out.read_bytes() and b"4111" not in out.read_bytes()
    assert score["prompt"] == same[20] and score["chosen"].startswith("Answer 20 ")
    assert thumbs["prompt"] == same[10] and thumbs["rejected"].startswith("Answer 11 ")
    assert all(r["prompt_name"] == "support" and r["prompt_version"] == 1 and r["chosen_model_version"] == 1
               for r in table)
    assert manifest["rows"] == 3 and manifest["counts"] == {"correction": 1, "score": 1, "thumbs": 1}
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert json.loads(manifest_path(out).read_text()) == manifest
    assert [f["name"] for f in manifest["schema"]][:3] == ["prompt", "chosen", "rejected"]
    assert (await write_preferences(MODEL, tmp_path / "none.parquet", since=time.time() + 60,
                                     dsn=isolated["LOOPLINE_POSTGRES_DSN"]))["rows"] == 0


def test_pairs_from_votes_and_corrections() -> None:
    def row(seq: int, out: str, kind: str, score: float = 0.0, correction: str = "",
            text: str = "q") -> dict[str, object]:
        return {"seq": seq, "request_id": f"r{seq}", "model_version": 1, "prompt_name": "p", "prompt_version": 2,
                "input_text": text, "output_text": out, "kind": kind, "score": score, "correction": correction}

    rows = [row(1, "a", "thumbs", 1), row(2, "b", "thumbs", -1), row(3, "c", "score", 0.5),  # 0.5: no verdict
            row(4, "d", "thumbs", -1, text="other"), row(5, "e", "correction", correction="e"),  # same: no pair
            row(6, "f", "score", 0.8), row(6, "f", "thumbs", -1), row(6, "f", "thumbs", -1)]  # votes sum to -1
    got = [(r["source"], r["chosen_request_id"], r["rejected_request_id"]) for r in pairs(rows)]
    assert got == [("score", "r1", "r6"), ("thumbs", "r1", "r2")]


def test_budget_spend_rolls_and_crosses() -> None:
    s = Spend(Budget(window_s=10, limit=1.0))
    s.add(0.0, 0.5)
    s.add(5.0, 0.4)
    assert s.at(6.0) == pytest.approx(0.9)
    assert budget_finding(s.at(6.0), s.budget, 0.8).severity == "warning"
    assert s.at(11.0) == pytest.approx(0.4), "the first cost left the window"
    assert not budget_finding(0.4, s.budget, 0.8).crossed
    assert budget_finding(1.0, s.budget, 0.8).severity == "critical"


def test_text_window_findings_and_restore() -> None:
    rng = np.random.default_rng(1)

    def rows(first: int, n: int, shift: float = 0.0, refused: float = 0.0) -> list[GenRow]:
        e = rng.normal(size=(n, 8))
        e[:, 1] += 3.0
        e[:, 0] += shift
        return [GenRow(first + i, float(first + i), e[i], 20, 80.0, bool(rng.random() < refused), False, True)
                for i in range(n)]

    ref = rows(1, 60)
    quiet_findings, figures = evaluate_text_window(ref, rows(61, 60), LlmLimits(), seed=1)
    assert not any(f.crossed for f in quiet_findings) and figures["latency_per_token_p95_ms"] == 4.0
    moved, _ = evaluate_text_window(ref, rows(121, 60, shift=2.0, refused=0.5), LlmLimits(), seed=1)
    crossed = {f.kind: f.severity for f in moved if f.crossed}
    assert crossed == {"text_drift": "critical", "refusal_rate": "critical"}, crossed

    win = TextWindow(Spec.parse("count:4/2"))
    due = []
    for r in rows(200, 7):
        due.append(win.add(r))
        if due[-1]:
            win.evaluated()
    assert due == [False, False, False, True, False, True, False], "full at 4 rows, then every 2"
    again = TextWindow(Spec.parse("count:4/2"))
    again.restore(list(win.rows), win.evaluated_seq)
    assert again.since == 1 and [r.seq for r in again.rows] == [r.seq for r in win.rows]
    with pytest.raises(ValueError, match="count windows"):
        TextWindow(Spec.parse("time:60s"))
