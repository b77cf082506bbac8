"""Guardrails on the LLM path: the pure stages of ``domain/guardrails.py`` plus PII through Presidio
(``loopline_ml.pii``, offline pattern recognizers), with Prometheus metrics per stage. Build one ``Guardrails``
at start (about 5 s: Presidio's recognizers) and share it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from loopline_ml.pii import Redactor
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from loopline_inference.adapters.injection_classifier import InjectionClassifier
from loopline_inference.domain.guardrails import (
    GuardrailConfig,
    Hit,
    StageResult,
    Verdict,
    check_blocked_patterns,
    check_length,
    check_refusal,
    injection_signals,
    judge_injection,
)


class Guardrails:
    """Checks prompts (``check_input``) and answers (``check_output``) stage by stage; ``redact`` masks PII
    (``<CREDIT_CARD>``, ``<EMAIL_ADDRESS>``, ...) whatever the stage actions, for anything logged or stored.

    Metrics: ``loopline_inference_guardrail_checks_total{model,stage}``,
    ``loopline_inference_guardrail_hits_total{model,stage,rule,action}``,
    ``loopline_inference_guardrail_seconds{stage}``. Calls are synchronous and CPU-bound (Presidio: a few
    milliseconds on a 500-character prompt); run them off the event loop.
    """

    def __init__(self, config: GuardrailConfig, registry: CollectorRegistry = REGISTRY) -> None:
        self._config = config
        self._pii_redactor = Redactor(config.pii_entities, config.pii_min_score)
        self._classifier = InjectionClassifier.from_file() if config.use_classifier else None
        self._checks = Counter("loopline_inference_guardrail_checks_total", "Texts checked per guardrail stage",
                               ["model", "stage"], registry=registry)
        self._hits = Counter("loopline_inference_guardrail_hits_total", "Guardrail rules that fired",
                             ["model", "stage", "rule", "action"], registry=registry)
        self._seconds = Histogram("loopline_inference_guardrail_seconds", "Time spent in a guardrail stage",
                                  ["stage"], registry=registry,
                                  buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))

    def check_input(self, text: str, *, model: str) -> Verdict:
        config = self._config
        results: list[StageResult] = []
        if config.injection != "off":
            results.append(self._run("injection", model, lambda: self._injection(text)))
        if config.pii_input != "off":
            results.append(self._run("pii_input", model, lambda: self._pii("pii_input", config.pii_input, text)))
        return self._verdict(text, results)

    def check_output(self, text: str, *, model: str) -> Verdict:
        return self._output(text, model, counted=True)

    def preview_output(self, text: str, *, model: str) -> Verdict:
        """``check_output`` without touching the metrics: for the partial text of a stream, checked again at
        every word, so that an answer's hits are counted once (by ``check_output`` on its final text)."""
        return self._output(text, model, counted=False)

    def _output(self, text: str, model: str, *, counted: bool) -> Verdict:
        config = self._config
        results: list[StageResult] = []
        current = text
        # Length first: what lies past the cap is dropped anyway, so the other stages need not read it.
        stages: list[tuple[str, str, Callable[[str], StageResult]]] = [
            ("max_length", config.max_length, lambda t: check_length(t, config)),
            ("blocked_pattern", config.blocked_pattern, lambda t: check_blocked_patterns(t, config)),
            ("pii_output", config.pii_output, lambda t: self._pii("pii_output", config.pii_output, t)),
            ("refusal", config.refusal, lambda t: check_refusal(t, config)),
        ]
        for stage, action, check in stages:
            if action == "off":
                continue
            result = self._run(stage, model, lambda check=check, t=current: check(t),  # type: ignore[misc]
                               counted=counted)
            results.append(result)
            current = result.text
        if config.max_length != "off":
            current = current[:config.max_output_chars]  # placeholders can be longer than what they replace
        return self._verdict(current, results)

    def redact(self, text: str) -> str:
        return self._pii_redactor.redact(text)

    def _verdict(self, text: str, results: list[StageResult]) -> Verdict:
        hits = tuple(hit for result in results for hit in result.hits)
        blocked = any(result.blocked for result in results)
        final = results[-1].text if results and not blocked else text
        return Verdict(self.redact(final) if blocked else final, hits, blocked)

    def _run(self, stage: str, model: str, check: Callable[[], StageResult], *, counted: bool = True) -> StageResult:
        start = time.perf_counter()
        result = check()
        if not counted:
            return result
        self._seconds.labels(stage).observe(time.perf_counter() - start)
        self._checks.labels(model, stage).inc()
        for hit in result.hits:
            self._hits.labels(model, hit.stage, hit.rule, hit.action).inc()
        return result

    def _injection(self, text: str) -> StageResult:
        signals = injection_signals(text)
        if self._classifier is not None:
            signals["classifier"] = self._classifier.probability(text)
        return judge_injection(text, signals, self._config)

    def _pii(self, stage: str, action: str, text: str) -> StageResult:
        found = self._pii_redactor.analyze(text)
        if not found:
            return StageResult(text)
        counts: dict[str, int] = {}
        for item in found:
            counts[item.entity_type] = counts.get(item.entity_type, 0) + 1
        hits = tuple(Hit(stage, entity, action, f"{count} found") for entity, count in sorted(counts.items()))
        redacted = self.redact(text) if action in {"redact", "block"} else text
        return StageResult(redacted, hits, blocked=action == "block")
