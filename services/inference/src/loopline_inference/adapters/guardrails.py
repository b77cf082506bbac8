"""Guardrails on the LLM path: the pure stages of ``domain/guardrails.py`` plus PII through Presidio, with
Prometheus metrics per stage.

Presidio runs offline: a blank spaCy pipeline (no model can be downloaded, so names and places, which need
NER, are not detected; only pattern recognizers: cards, e-mails, phones, IBANs, IPs, SSNs, crypto wallets)
and an e-mail recognizer whose domain check uses tldextract's bundled public-suffix snapshot instead of
fetching the list. Build one ``Guardrails`` at start (about 5 s: Presidio's recognizers) and share it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable

import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine, Pattern, RecognizerRegistry, RecognizerResult
from presidio_analyzer.nlp_engine import SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, EmailRecognizer
from presidio_anonymizer import AnonymizerEngine
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

_LANGUAGE = "en"
_CACHE_SIZE = 256  # check_input then redact() on the same prompt: analyse it once


class _BlankSpacy(SpacyNlpEngine):
    """Tokenizer only: no spaCy model is available offline."""

    def __init__(self) -> None:
        super().__init__(models=[{"lang_code": _LANGUAGE, "model_name": "blank"}])
        self.nlp = {_LANGUAGE: spacy.blank(_LANGUAGE)}  # type: ignore[assignment]  # None until load()

    def load(self) -> None:
        """Nothing to load: the blank pipeline is built in ``__init__``."""


class _OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer calls ``tldextract.extract``, which downloads the public-suffix list on
    first use; this one reads the snapshot tldextract ships."""

    _extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

    def validate_result(self, pattern_text: str) -> bool:
        return bool(self._extract(pattern_text).fqdn)


def _separated_cards() -> CreditCardRecognizer:
    """Card numbers written with dots or spaced dashes ("4111.1111.1111.1111", "4111 - 1111 - ..."), which
    Presidio's own pattern misses; the Luhn check still decides."""
    pattern = Pattern("credit card (separated)", r"\b\d(?:[ .\-]{1,3}\d|\d){12,18}\b", 0.3)
    return CreditCardRecognizer(patterns=[pattern], replacement_pairs=[("-", ""), (" ", ""), (".", "")],
                                name="SeparatedCreditCardRecognizer")


def build_analyzer() -> AnalyzerEngine:
    nlp = _BlankSpacy()
    registry = RecognizerRegistry()
    presidio_log = logging.getLogger("presidio-analyzer")
    level = presidio_log.level
    presidio_log.setLevel(logging.ERROR)  # one warning per recognizer of another language, every start
    try:
        registry.load_predefined_recognizers(nlp_engine=nlp, languages=[_LANGUAGE])
    finally:
        presidio_log.setLevel(level)
    registry.remove_recognizer("SpacyRecognizer")  # NER on a blank pipeline finds nothing
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(_OfflineEmailRecognizer())
    registry.add_recognizer(_separated_cards())
    return AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=[_LANGUAGE])


# Every pattern of these recognizers needs a digit, an '@' or two colons a hex group apart (an IPv6 address) to
# match, so a text with none of them skips Presidio: a few milliseconds a call, paid otherwise by most prompts
# and by every preview of a streamed answer.
_DIGIT_BOUND = frozenset({"CREDIT_CARD", "CRYPTO", "EMAIL_ADDRESS", "IBAN_CODE", "IP_ADDRESS", "PHONE_NUMBER",
                          "US_SSN"})
_MAY_HOLD_PII = re.compile(r"[@\d]|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:")


def _fold(text: str) -> str:
    """Full-width digits and letters to ASCII, one character for one so Presidio's offsets stay valid."""
    out = []
    for ch in text:
        folded = unicodedata.normalize("NFKC", ch)
        out.append(folded if len(folded) == 1 else ch)
    return "".join(out)


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
        self._analyzer = build_analyzer()
        missing = set(config.pii_entities) - set(self._analyzer.get_supported_entities(_LANGUAGE))
        if missing:
            # Fail at start, not on the first request; PERSON, LOCATION, ... would need a spaCy NER model.
            raise ValueError(f"pii_entities not detectable offline: {sorted(missing)}")
        self._anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]
        self._classifier = InjectionClassifier.from_file() if config.use_classifier else None
        self._cache: OrderedDict[str, list[RecognizerResult]] = OrderedDict()
        self._prefilter = set(config.pii_entities) <= _DIGIT_BOUND
        self._lock = threading.Lock()
        self._checks = Counter("loopline_inference_guardrail_checks_total", "Texts checked per guardrail stage",
                               ["model", "stage"], registry=registry)
        self._hits = Counter("loopline_inference_guardrail_hits_total", "Guardrail rules that fired",
                             ["model", "stage", "rule", "action"], registry=registry)
        self._seconds = Histogram("loopline_inference_guardrail_seconds", "Time spent in a guardrail stage",
                                  ["stage"], registry=registry,
                                  buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self._analyze("warm-up: a@example.com 4111 1111 1111 1111")  # the first call costs ~0.2 s more

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
        results = self._analyze(text)
        if not results:
            return text
        # Presidio's two packages each declare their own RecognizerResult; the anonymizer reads the same fields.
        return str(self._anonymizer.anonymize(text=text, analyzer_results=results).text)  # type: ignore[arg-type]

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
        found = self._analyze(text)
        if not found:
            return StageResult(text)
        counts: dict[str, int] = {}
        for item in found:
            counts[item.entity_type] = counts.get(item.entity_type, 0) + 1
        hits = tuple(Hit(stage, entity, action, f"{count} found") for entity, count in sorted(counts.items()))
        redacted = self.redact(text) if action in {"redact", "block"} else text
        return StageResult(redacted, hits, blocked=action == "block")

    def _analyze(self, text: str) -> list[RecognizerResult]:
        if self._prefilter and not _MAY_HOLD_PII.search(_fold(text)):
            return []  # no digit, '@' or IPv6 colons: none of the pattern recognizers can match
        with self._lock:
            if text in self._cache:
                self._cache.move_to_end(text)
                return self._cache[text]
        results: list[RecognizerResult] = self._analyzer.analyze(
            _fold(text), language=_LANGUAGE, entities=list(self._config.pii_entities),
            score_threshold=self._config.pii_min_score)
        with self._lock:
            self._cache[text] = results
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return results
