"""PII detection and redaction with Presidio, offline: one redactor shared by inference's guardrails (prompts,
answers, logs) and the monitor (feedback corrections, before they are stored or exported for training).

A blank spaCy pipeline (no model can be downloaded, so names and places, which need NER, are not detected; only
pattern recognizers: cards, e-mails, phones, IBANs, IPs, SSNs, crypto wallets) and an e-mail recognizer whose
domain check uses tldextract's bundled public-suffix snapshot instead of fetching the list. Building one takes a
few seconds (Presidio's recognizers): build it once per process and share it.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable

import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine, Pattern, RecognizerRegistry, RecognizerResult
from presidio_analyzer.nlp_engine import SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, EmailRecognizer
from presidio_anonymizer import AnonymizerEngine

DEFAULT_ENTITIES = ("CREDIT_CARD", "CRYPTO", "EMAIL_ADDRESS", "IBAN_CODE", "IP_ADDRESS", "PHONE_NUMBER", "US_SSN")

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


class Redactor:
    """Finds PII (``analyze``) and masks it (``redact``: ``<CREDIT_CARD>``, ``<EMAIL_ADDRESS>``, ...).

    Thread-safe; remembers its last analyses (a prompt checked, then redacted for the log, is analysed once).
    """

    def __init__(self, entities: Iterable[str] = DEFAULT_ENTITIES, min_score: float = 0.4) -> None:
        self.entities = list(entities)
        self.min_score = min_score
        self._analyzer = build_analyzer()
        missing = set(self.entities) - set(self._analyzer.get_supported_entities(_LANGUAGE))
        if missing:
            # Fail at start, not on the first request; PERSON, LOCATION, ... would need a spaCy NER model.
            raise ValueError(f"pii_entities not detectable offline: {sorted(missing)}")
        self._anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]
        self._cache: OrderedDict[str, list[RecognizerResult]] = OrderedDict()
        self._prefilter = set(self.entities) <= _DIGIT_BOUND
        self._lock = threading.Lock()
        self.analyze("warm-up: a@example.com 4111 1111 1111 1111")  # the first call costs ~0.2 s more

    def analyze(self, text: str) -> list[RecognizerResult]:
        if self._prefilter and not _MAY_HOLD_PII.search(_fold(text)):
            return []  # no digit, '@' or IPv6 colons: none of the pattern recognizers can match
        with self._lock:
            if text in self._cache:
                self._cache.move_to_end(text)
                return self._cache[text]
        results: list[RecognizerResult] = self._analyzer.analyze(
            _fold(text), language=_LANGUAGE, entities=self.entities, score_threshold=self.min_score)
        with self._lock:
            self._cache[text] = results
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return results

    def redact(self, text: str) -> str:
        results = self.analyze(text)
        if not results:
            return text
        # Presidio's two packages each declare their own RecognizerResult; the anonymizer reads the same fields.
        return str(self._anonymizer.anonymize(text=text, analyzer_results=results).text)  # type: ignore[arg-type]
