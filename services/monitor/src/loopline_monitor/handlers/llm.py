"""on_generations / on_feedback: ``loopline.generations.<model>`` and ``loopline.feedback.<model>`` -> text
drift, output quality, budgets, feedback quality; unmatched feedback swept to the dead letters.

A generation's input is embedded with MiniLM (in a thread, before the lock is taken) and stored once
by event id with its embedding. Per version, the first ``monitor_text_reference`` generations are the
reference; every later one goes into the version's count windows, each evaluated as the drift windows
are (same episodes, hysteresis, repeats, silences and outbox, via :meth:`Watch.decide`). Budgets are
per model, evaluated on every batch with a 1-of-1 policy (a spend is a fact, not a noisy statistic).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp
from loopline.llm.v1.events_pb2 import Feedback, Generation
from loopline.monitor.v1.events_pb2 import WindowEvaluated
from loopline_core.errors import invalid
from loopline_core.events import derived_id, metadata
from loopline_core.kafka import Publisher, Record, TopicNamer
from loopline_core.kafka.codec import proto
from loopline_core.kafka.delivery import Item
from loopline_ml.embeddings import Embedder
from loopline_ml.pii import Redactor

from loopline_monitor import metrics as m
from loopline_monitor.adapters.llm_store import LlmStore, NewGeneration, gen_row
from loopline_monitor.domain import alerting
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
from loopline_monitor.handlers import sweeping
from loopline_monitor.handlers.watch import Watch, Watched
from loopline_monitor.settings import Settings

log = logging.getLogger(__name__)
BUDGET_POLICY_N = 1
FEEDBACK_KINDS = ("thumbs", "score", "correction")
_parse_feedback = proto(Feedback, "metadata.event_id", "request_id", "model_name", "kind")


def _ts(t: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


@dataclass
class LlmVersion:
    alerts: Watched
    """The version's alert states (the same episodes as every other kind)."""
    reference: list[GenRow]
    windows: list[TextWindow]
    evaluations: dict[str, int] = field(default_factory=dict)


class LlmWatch:
    def __init__(self, store: LlmStore, watch: Watch, embedder: Callable[[], Embedder], publisher: Publisher,
                 namer: TopicNamer, settings: Settings, redactor: Callable[[], Redactor] | None = None) -> None:
        self.store = store
        self.watch = watch
        self._embedder_factory = embedder
        self._embedder: Embedder | None = None
        self._redactor_factory = redactor
        self._redactor: Redactor | None = None
        self.publisher = publisher
        self.namer = namer
        self.s = settings
        self.specs = [Spec.parse(w) for w in settings.monitor_text_windows]
        for spec in self.specs:
            TextWindow(spec)  # refuses a time window at start-up, not on the first generation
        self.limits = LlmLimits(settings.monitor_text_alpha, settings.monitor_text_permutations,
                                settings.monitor_text_critical_distance, settings.monitor_length_alpha,
                                settings.monitor_refusal_limits, settings.monitor_guardrail_limits,
                                settings.monitor_latency_per_token_limits_ms)
        self.budgets = {model: Budget(float(b["window_s"]), float(b["limit"]), str(b.get("currency", "USD")))
                        for model, b in settings.monitor_llm_budgets.items()}
        self.budget_policy = alerting.Policy(BUDGET_POLICY_N, BUDGET_POLICY_N, settings.monitor_repeat_s)
        self.spend: dict[str, Spend] = {}
        self.versions: dict[tuple[str, int], LlmVersion] = {}
        self.lock = asyncio.Lock()  # the two LLM consumers share this state (not the predictions' lock)

    decode_generation = staticmethod(proto(Generation, "metadata.event_id", "request_id", "model_name"))

    @staticmethod
    def decode_feedback(record: Record) -> Feedback:
        f: Feedback = _parse_feedback(record)
        if f.kind not in FEEDBACK_KINDS:
            raise invalid(f"feedback kind {f.kind!r}: expected one of {', '.join(FEEDBACK_KINDS)}")
        return f

    async def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = await asyncio.to_thread(self._embedder_factory)
        return self._embedder

    async def redactor(self) -> Redactor | None:
        if self._redactor is None and self._redactor_factory is not None:
            self._redactor = await asyncio.to_thread(self._redactor_factory)
        return self._redactor

    # ---- generations ----------------------------------------------------------------------------

    async def on_generations(self, items: list[Item[Generation]]) -> None:
        """Consumes ``loopline.generations.<model>`` in batches: embed the inputs, store every generation once,
        feed its version's reference or windows, evaluate due windows and the model's budget; publishes
        ``WindowEvaluated`` and ``AlertRaised``/``AlertResolved`` (kinds text_drift, response_length,
        refusal_rate, guardrail_rate, latency_per_token, budget) through the outbox."""
        gens = [it.value for it in items]
        embedder = await self.embedder()
        started = time.perf_counter()
        vectors = await asyncio.to_thread(embedder.embed, [g.input_text for g in gens])
        m.EMBED_SECONDS.labels(gens[0].model_name).observe(time.perf_counter() - started)
        rows = [NewGeneration(g.metadata.event_id, g.request_id, g.model_name, g.model_version, g.variant,
                              g.prompt_name, g.prompt_version, g.input_text, g.output_text, g.prompt_tokens,
                              g.completion_tokens, g.cost, g.currency, g.latency_ms, g.refused, len(g.guardrails),
                              g.outcome, _at(g, it.record), vec)
                for it, g, vec in zip(items, gens, vectors, strict=True)]
        async with self.lock:
            added, joined = await self.store.add(rows)
            m.GENERATIONS.labels(gens[0].model_name, "repeat").inc(len(rows) - len(added))
            for g, seq in added:
                m.GENERATIONS.labels(g.model, g.outcome or "ok").inc()
                v = await self.version(g.model, g.version)
                row = gen_row(seq, g.at, g.embedding, g.completion_tokens, g.latency_ms, g.refused,
                              g.guardrail_hits, g.outcome)
                if len(v.reference) < self.s.monitor_text_reference:
                    v.reference.append(row)
                    continue
                for win in v.windows:
                    if win.add(row):
                        await self._evaluate(v, win)
            for model in sorted({g.model for g, _ in added}):
                await self._budget(model, [(g.at, g.cost) for g, _ in added if g.model == model])
            for model, version in sorted(set(joined)):
                m.FEEDBACK.labels(model, "joined").inc(joined.count((model, version)))
                await self._quality(model, version)
            await self.watch.flush()

    async def version(self, model: str, version: int) -> LlmVersion:
        """A version's reference, windows and alert states, rebuilt from the store the first time it is seen."""
        key = (model, version)
        if key in self.versions:
            return self.versions[key]
        ref = await self.store.reference(model, version, self.s.monitor_text_reference)
        after = ref[-1].seq if ref else 0
        marks = await self.store_windows(model, version)
        windows = []
        evaluations = {}
        for spec in self.specs:
            win = TextWindow(spec)
            name = f"text:{spec}"
            seq, _, count = marks.get(name, (0, None, 0))
            if len(ref) >= self.s.monitor_text_reference:
                win.restore(await self.store.newest(model, version, int(spec.size), after), seq)
            evaluations[name] = count
            windows.append(win)
        states = await self.watch.store.alert_states(model, version)
        alerts = Watched(model, version, None, [], [], {}, alerts={k: alerting.State.from_json(st)
                                                                   for k, st in states.items()})
        v = LlmVersion(alerts, ref, windows, evaluations)
        self.versions[key] = v
        return v

    async def store_windows(self, model: str, version: int) -> dict[str, tuple[int, float | None, int]]:
        return await self.watch.store.windows(model, version)

    async def _evaluate(self, v: LlmVersion, win: TextWindow) -> None:
        w = v.alerts
        spec = f"text:{win.spec}"
        rows = list(win.rows)
        last = rows[-1].seq
        findings, figures = await asyncio.to_thread(evaluate_text_window, v.reference, rows, self.limits, last)
        win.evaluated()
        count = v.evaluations.get(spec, 0) + 1
        v.evaluations[spec] = count
        for k, val in figures.items():
            m.LLM_WINDOW.labels(w.model, str(w.version), k).set(val)
        start, end = rows[0].at, rows[-1].at
        eid = derived_id("window", w.model, str(w.version), spec, str(last))
        record = WindowEvaluated(metadata=metadata("monitor", eid), model_name=w.model, model_version=w.version,
                                 window=spec, window_size=len(rows), window_start=_ts(start), window_end=_ts(end),
                                 metrics=figures, crossed=[f.kind for f in findings if f.crossed])
        await self.watch.decide(w, spec, "", start, end, len(rows), findings, record, ("", ""),
                                (win.evaluated_seq, None, count))

    # ---- budgets --------------------------------------------------------------------------------

    async def _budget(self, model: str, costs: list[tuple[float, float]]) -> None:
        budget = self.budgets.get(model)
        if budget is None:
            return
        now = time.time()
        spend = self.spend.get(model)
        if spend is None:  # rebuilt from the store: what this batch added is already there
            spend = self.spend[model] = Spend(budget)
            for at, cost in await self.store.costs_since(model, now - budget.window_s):
                spend.add(at, cost)
        else:
            for at, cost in sorted(costs):
                spend.add(at, cost)
        total = spend.at(now)
        m.LLM_SPEND.labels(model, budget.currency).set(total)
        m.LLM_BUDGET_SHARE.labels(model).set(total / budget.limit if budget.limit > 0 else 0.0)
        f = budget_finding(total, budget, self.s.monitor_budget_warning)
        w = (await self.version(model, 0)).alerts  # a model's budget: version 0 (it spans versions)
        state = w.alerts.get("budget", alerting.State())
        worse = f.crossed and state.active and alerting.SEVERITIES.index(f.severity) > \
            alerting.SEVERITIES.index(state.severity or "warning")
        due = state.active and self.s.monitor_repeat_s > 0 and now - state.last_sent >= self.s.monitor_repeat_s
        if f.crossed == state.active and not worse and not due:
            return  # nothing would change: no evaluation recorded for every batch
        spec = f"budget:{budget.window_s:g}s"
        eid = derived_id("budget", model, f"{now:.6f}", f"{total:.9g}")
        figures = {"spend": total, "limit": budget.limit, "share": f.value}
        record = WindowEvaluated(metadata=metadata("monitor", eid), model_name=model, model_version=0, window=spec,
                                 window_size=len(spend.items), window_start=_ts(now - budget.window_s),
                                 window_end=_ts(now), metrics=figures, crossed=["budget"] if f.crossed else [])
        await self.watch.decide(w, spec, "", now - budget.window_s, now, len(spend.items), [f], record, ("", ""),
                                None, policy=self.budget_policy)

    # ---- feedback -------------------------------------------------------------------------------

    async def on_feedback(self, f: Feedback, record: Record) -> None:
        """Consumes ``loopline.feedback.<model>``: keep the rating once (by event id) and join it to its generation
        by request id (now, or when the generation arrives); per-version feedback quality follows.

        A correction is written by a person and may carry PII the generation's redaction never saw: it is
        redacted before it is stored (and so before any preference export uses it for training)."""
        value = record.value
        redactor = await self.redactor() if f.correction else None
        if redactor is not None:
            redacted = await asyncio.to_thread(redactor.redact, f.correction)
            if redacted != f.correction:
                f.correction = redacted
                value = f.SerializeToString()  # the kept copy (replayed to the dead letters) is redacted too
        async with self.lock:
            new, joined = await self.store.add_feedback(f.metadata.event_id, f.request_id, f.model_name, f.kind,
                                                        f.score, f.correction, f.rater, value, record.key,
                                                        record.topic)
            if not new or joined is None:
                m.FEEDBACK.labels(f.model_name, "waiting" if new else "repeat").inc()
                return
            m.FEEDBACK.labels(f.model_name, "joined").inc()
            await self._quality(*joined)

    async def _quality(self, model: str, version: int) -> None:
        for k, val in (await self.store.quality(model, version)).items():
            m.FEEDBACK_QUALITY.labels(model, str(version), k).set(val)

    async def sweep(self, stop: asyncio.Event) -> None:
        """Dead-letter feedback that waited longer than the TTL for its generation, every sweep interval."""
        await sweeping.every(stop, self.s.monitor_label_sweep_s, self.sweep_once, "feedback")

    async def sweep_once(self) -> int:
        ttl = self.s.monitor_feedback_ttl_s
        expired = await self.store.expired_feedback(ttl)
        await sweeping.dead_letter(self.publisher, self.namer, expired, "unmatched_feedback", lambda r: (
            f"no generation with request id {r['request_id']} arrived within {ttl:g}s of its feedback"))
        for r in expired:
            m.FEEDBACK.labels(r["topic"].rsplit(".", 1)[-1], "dead_lettered").inc()
        if expired:  # marked after the dead letters were acknowledged: a crash repeats, never loses
            await self.store.mark_dead([r["event_id"] for r in expired])
            log.info("feedback dead-lettered", extra={"count": len(expired)})
        return len(expired)


def _at(g: Generation, record: Record) -> float:
    return g.metadata.occurred_at.ToNanoseconds() / 1e9 if g.metadata.HasField("occurred_at") else \
        record.timestamp_ms / 1000.0
