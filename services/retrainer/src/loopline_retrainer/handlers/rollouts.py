"""The rollout controller: a gated challenger meets live traffic, and the sequential test decides.

``start`` is called by the promotion handler for a model whose policy is canary or shadow: the
version gets the ``challenger`` alias (compare-and-set) and a running rollout is recorded with its
"started" event. ``on_predictions`` and ``on_label`` add observations; after each batch, and every
``retrainer_rollout_check_s`` (durations pass without traffic), each running rollout is decided
again. A decision moves aliases first and records itself last, with its RolloutDecided event, so a
crash in between repeats the moves (each is a no-op the second time) and the event is sent once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging

from loopline.inference.v1.events_pb2 import PredictionLogged
from loopline.registry.v1 import registry_pb2 as pb
from loopline.retrainer.v1.events_pb2 import RolloutDecided, RolloutSignal
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.events import derived_id, metadata
from loopline_core.kafka import Item, TopicNamer
from loopline_core.kafka.codec import proto
from loopline_core.outbox import OutboxEvent, Relay
from loopline_core.registry import RegistryClient
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext

from loopline_retrainer.adapters.rollouts import Observation, Rollout, RolloutStore
from loopline_retrainer.domain.rollout import Counts, Outcome, Policy, Step, decide
from loopline_retrainer.metrics import ROLLOUT_RATE, ROLLOUT_RATIO, ROLLOUT_ROWS, ROLLOUT_RUNNING, ROLLOUTS
from loopline_retrainer.settings import Settings

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("loopline.retrainer")
ACTOR = "retrainer-rollout"
ROLLOUT_TYPE = RolloutDecided.DESCRIPTOR.full_name
CHALLENGER = "challenger"


def policy_of(model: pb.Model, s: Settings) -> Policy:
    """The model's RolloutPolicy with this service's defaults for what it leaves unset."""
    r, d = model.rollout, Policy()
    return Policy(mode=r.mode or "direct", alpha=r.alpha or d.alpha, min_samples=r.min_samples or d.min_samples,
                  latency_budget_ms=r.latency_budget_ms or d.latency_budget_ms,
                  min_duration_s=r.min_duration_s, max_duration_s=r.max_duration_s,
                  margin=s.retrainer_rollout_margin, tau=s.retrainer_rollout_tau)


class RolloutController:
    def __init__(self, store: RolloutStore, registry: RegistryClient, outbox: Relay, namer: TopicNamer,
                 settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.outbox = outbox
        self.namer = namer
        self.s = settings
        self._origins: dict[str, SpanContext] = {}
        """Each running rollout's start (a span of the training's trace), for its decision's link."""
        self._lock = asyncio.Lock()

    decode_prediction = staticmethod(proto(PredictionLogged, "metadata.event_id", "model_name"))

    # ---- start ----------------------------------------------------------------------------------

    async def start(self, model: pb.Model, number: int, champion: int, reason: str) -> None:
        """Make ``number`` the challenger of ``champion`` (compare-and-set on the alias's holder now) and
        record a running rollout with its "started" event. An ABORTED (someone moved the alias between
        the read and the move) propagates, so the caller decides again."""
        name = model.name
        held = await self.registry.resolve(name, CHALLENGER)
        policy = policy_of(model, self.s)
        await self.registry.set_alias(name, CHALLENGER, number, actor=ACTOR, reason=reason,
                                      expected=held.version if held is not None else 0,
                                      evidence=json.dumps({"rollout": dataclasses.asdict(policy)}))
        rollout = Rollout(derived_id("rollout", name, str(number)), name, champion, number, policy.mode,
                          dataclasses.asdict(policy), 0.0, "running")
        started, superseded = await self.store.start(
            rollout, self._event(rollout, Step.CONTINUE, reason, None),
            lambda old: self._event(old, Step.ROLLBACK, f"superseded by v{number}", None))
        if started:
            # kept in memory only: after a restart the decision still happens, its span just has no link
            self._origins[rollout.rollout_id] = trace.get_current_span().get_span_context()
            ROLLOUTS.labels(name, "started").inc()
            ROLLOUT_RUNNING.labels(name).set(number)
            log.info("rollout started", extra={"model": name, "challenger": number, "champion": champion,
                                               "mode": policy.mode, "superseded": [r.challenger_version
                                                                                   for r in superseded]})
        await self.outbox.flush(self.s.outbox_flush_s)

    # ---- observations ---------------------------------------------------------------------------

    async def on_predictions(self, items: list[Item[PredictionLogged]]) -> None:
        """Consumes ``loopline.predictions.<model>`` in batches; counts the rows of running rollouts'
        two versions (each once, however often redelivered), then decides those rollouts again.
        Rows of other versions, and of models with no rollout running, are not its business."""
        running = {r.model_name: r for r in await self.store.running()}
        touched: dict[str, list[Observation]] = {}
        for item in items:
            p = item.value
            r = running.get(p.model_name)
            if r is None:
                continue
            arm = ("challenger" if p.model_version == r.challenger_version else
                   "champion" if p.model_version == r.champion_version else None)
            if arm is None:
                continue
            failed = bool(p.error)
            touched.setdefault(r.rollout_id, []).append(Observation(
                p.metadata.event_id, arm, p.request_id or p.metadata.event_id, failed,
                p.latency_ms > float(r.policy["latency_budget_ms"]),
                float(p.outputs[0]) if p.outputs and not failed else None))
        by_id = {r.rollout_id: r for r in running.values()}
        for rollout_id, rows in touched.items():
            added = await self.store.observe(rollout_id, rows)
            if added:
                r = by_id[rollout_id]
                for arm in ("champion", "challenger"):
                    ROLLOUT_ROWS.labels(r.model_name, arm).inc(sum(1 for o in rows if o.arm == arm))
        for rollout_id in touched:
            await self.check(by_id[rollout_id].model_name)

    async def on_label(self, event_id: str, value: float) -> None:
        """A label from ``loopline.labels.<dataset>`` (through the retrainer's label handler): kept while
        a rollout runs, and given to the rows it labels."""
        running = await self.store.running()
        if not running:
            return
        if await self.store.label(event_id, value):
            for r in running:
                await self.check(r.model_name)

    # ---- decisions ------------------------------------------------------------------------------

    async def run_checks(self, stop: asyncio.Event) -> None:
        """Decide every running rollout every ``retrainer_rollout_check_s`` until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.s.retrainer_rollout_check_s)
            if stop.is_set():
                return
            try:
                for r in await self.store.running():
                    await self.check(r.model_name)
            except Exception:  # an edge loop: log and try again next tick (the registry may be down)
                log.exception("rollout check failed; trying again")

    async def check(self, model: str) -> Outcome | None:
        """Decide the model's running rollout on what is counted now, and act on the decision."""
        async with self._lock:
            running = await self.store.running(model)
            if not running:
                return None
            r = running[0]
            policy = Policy(**r.policy)
            arms = await self.store.counts(r.rollout_id, self.s.retrainer_rollout_score_threshold)
            outcome = decide(policy, arms.get("champion", Counts()), arms.get("challenger", Counts()), r.elapsed_s)
            self._gauges(r, outcome)
            if outcome.step is Step.CONTINUE:
                return outcome
            # decided by whatever woke the check (a batch, a label, the clock): the decision's span links
            # the rollout's start, so the trace from the alert through training reaches the promotion
            origin = self._origins.pop(r.rollout_id, None)
            with _tracer.start_as_current_span(f"rollout {outcome.step.value}", links=[Link(origin)] if origin else [],
                                               attributes={"loopline.model": r.model_name,
                                                           "loopline.challenger": r.challenger_version}):
                if outcome.step is Step.PROMOTE:
                    await self._promote(r, outcome)
                elif outcome.step is Step.ROLLBACK:
                    await self._rollback(r, outcome.reason, outcome)
            return outcome

    async def _promote(self, r: Rollout, outcome: Outcome) -> None:
        """Champion -> challenger by compare-and-set on the champion the rollout compared against; if the
        champion moved meanwhile, the evidence is about another model, so the rollout is rolled back."""
        evidence = json.dumps({"rollout": r.rollout_id, "decision": "promote", "reason": outcome.reason,
                               "signals": [dataclasses.asdict(t) for t in outcome.signals]})
        for _ in range(3):
            held = await self.registry.champion(r.model_name)
            current = held.version if held is not None else 0
            if current == r.challenger_version:
                break  # moved already (a repeat after a crash, or a person)
            if current != r.champion_version:
                await self._rollback(r, f"the champion moved from v{r.champion_version} to "
                                        f"{f'v{current}' if current else 'none'} during the rollout; its evidence "
                                        f"compared against v{r.champion_version}", outcome)
                return
            try:
                await self.registry.set_alias(r.model_name, "champion", r.challenger_version, actor=ACTOR,
                                              reason=outcome.reason, expected=current, evidence=evidence)
                break
            except LooplineError as exc:
                if exc.kind is not ErrorKind.ABORTED:
                    raise
                log.info("champion moved meanwhile; deciding again", extra={"model": r.model_name})
        else:
            raise LooplineError(ErrorKind.UNAVAILABLE, f"{r.model_name}: the champion keeps moving")
        await self._drop_challenger(r, f"promoted to champion: {outcome.reason}")
        await self._close(r, Step.PROMOTE, outcome.reason, outcome)

    async def _rollback(self, r: Rollout, reason: str, outcome: Outcome) -> None:
        """Challenger alias off (compare-and-set on this version), the version deprecated; the champion
        is not touched."""
        await self._drop_challenger(r, f"rolled back: {reason}")
        try:
            await self.registry.set_stage(r.model_name, r.challenger_version, "deprecated", actor=ACTOR,
                                          reason=f"rolled back: {reason}")
        except LooplineError as exc:  # it holds champion after all (a person promoted it): leave it
            if exc.kind is not ErrorKind.FAILED_PRECONDITION:
                raise
            log.info("not deprecating the challenger", extra={"model": r.model_name, "error": exc.message})
        await self._close(r, Step.ROLLBACK, reason, outcome)

    async def _drop_challenger(self, r: Rollout, reason: str) -> None:
        held = await self.registry.resolve(r.model_name, CHALLENGER)
        if held is None or held.version != r.challenger_version:
            return
        try:
            await self.registry.delete_alias(r.model_name, CHALLENGER, actor=ACTOR, reason=reason,
                                             expected=r.challenger_version)
        except LooplineError as exc:  # someone moved it first: it no longer names this version
            if exc.kind is not ErrorKind.ABORTED:
                raise

    async def _close(self, r: Rollout, step: Step, reason: str, outcome: Outcome) -> None:
        if await self.store.close(r.rollout_id, step.value, reason, self._event(r, step, reason, outcome)):
            ROLLOUTS.labels(r.model_name, step.value).inc()
            ROLLOUT_RUNNING.labels(r.model_name).set(0)
            log.info("rollout decided", extra={"model": r.model_name, "challenger": r.challenger_version,
                                               "decision": step.value, "reason": reason})
            await self.outbox.flush(self.s.outbox_flush_s)

    def _event(self, r: Rollout, step: Step, reason: str, outcome: Outcome | None) -> OutboxEvent:
        decision = "started" if step is Step.CONTINUE else step.value
        msg = RolloutDecided(metadata=metadata("retrainer", derived_id("rollout-decided", r.rollout_id, decision)),
                             model_name=r.model_name, champion_version=r.champion_version,
                             challenger_version=r.challenger_version, decision=decision, reason=reason,
                             mode=r.mode, elapsed_s=r.elapsed_s)
        for t in outcome.signals if outcome else []:
            msg.signals.append(RolloutSignal(
                name=t.name, champion_n=t.champion.n, champion_events=t.champion.events, challenger_n=t.challenger.n,
                challenger_events=t.challenger.events, worse_ratio=t.worse_ratio, not_worse_ratio=t.not_worse_ratio,
                threshold=t.threshold, verdict=t.verdict.value))
        return OutboxEvent(msg.metadata.event_id, self.namer.model_events(), msg.SerializeToString(),
                           key=r.model_name, message_type=ROLLOUT_TYPE)

    @staticmethod
    def _gauges(r: Rollout, outcome: Outcome) -> None:
        for t in outcome.signals:
            ROLLOUT_RATIO.labels(r.model_name, t.name, "worse").set(t.worse_ratio)
            ROLLOUT_RATIO.labels(r.model_name, t.name, "not_worse").set(t.not_worse_ratio)
            for arm, a in (("champion", t.champion), ("challenger", t.challenger)):
                ROLLOUT_RATE.labels(r.model_name, t.name, arm).set(a.events / a.n if a.n else 0.0)
