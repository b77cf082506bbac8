"""Guardrails on the LLM path: their configuration, verdicts and the stages that need no library. Pure.

Stages (each with its own action in :class:`GuardrailConfig`, ``"off"`` disables it):

* ``injection`` (input): a scored rule set over a normalised copy of the prompt, plus an optional
  classifier's probability, combined by noisy-or (``1 - prod(1 - w)``) so two weak signals add up
  and one strong rule is enough. Hits name the rules, never the matched text.
* ``pii_input`` / ``pii_output``: Presidio, in the adapter (``adapters/guardrails.py``).
* ``blocked_pattern``, ``max_length``, ``refusal`` (output): regular expressions and a length cap.

Detection runs on :func:`normalize` (NFKC, format characters dropped, common Cyrillic/Greek
look-alikes folded to Latin, lower case, curly quotes straightened) so case, spacing, line breaks
and look-alike letters do not hide a rule. Not handled: leetspeak ("1gn0re"), letters spaced out
("i g n o r e"), other languages, encodings other than base64 (hex, rot13, ...).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Stage = Literal["injection", "pii_input", "pii_output", "blocked_pattern", "max_length", "refusal"]
HitAction = Literal["block", "redact", "flag"]


@dataclass(frozen=True)
class Hit:
    stage: str
    """``injection``, ``pii_input``, ``pii_output``, ``blocked_pattern``, ``max_length`` or ``refusal``."""
    rule: str
    """The rule or entity that fired (``ignore_previous``, ``CREDIT_CARD``, ``pattern_0``)."""
    action: str
    """``block``, ``redact`` or ``flag``."""
    detail: str
    """A short reason; never the matched text (it may be the very secret the stage protects)."""


@dataclass(frozen=True)
class Verdict:
    text: str
    """The text to use: redacted and/or truncated as configured. When ``blocked``, it is still the
    redacted text (safe to log), but it must not be sent to the engine or returned to the caller."""
    hits: tuple[Hit, ...]
    blocked: bool


DEFAULT_PII_ENTITIES = ("CREDIT_CARD", "CRYPTO", "EMAIL_ADDRESS", "IBAN_CODE", "IP_ADDRESS", "PHONE_NUMBER",
                        "US_SSN")
# Matched against normalize()d output (lower case, straight apostrophes).
DEFAULT_REFUSALS = (
    r"\bi (?:can't|cannot|can not|won't|will not|am unable to|'m unable to|am not able to|'m not able to)"
    r" (?:help|assist|provide|comply|do that|fulfil|fulfill|answer|support)",
    r"\bi'?m sorry,? but i (?:can't|cannot|can not|won't|am unable|'m unable)",
    r"\bas an ai\b",
    r"\bas a (?:large )?language model\b",
    r"\bi (?:must|have to) (?:decline|refuse)\b",
)


class GuardrailConfig(BaseModel):
    """Read from ``LOOPLINE_INFERENCE_GUARDRAILS`` (JSON). Defaults are the production ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    injection: Literal["block", "flag", "off"] = "block"
    injection_threshold: float = Field(0.5, gt=0.0, le=1.0)
    """Noisy-or score of the matched rules (and the classifier) at which the stage fires."""
    use_classifier: bool = False
    """Add the char n-gram classifier's probability to the score. Off by default: it learns from a few
    hundred shipped examples and misfires more on unseen benign text than the rules do."""
    pii_input: Literal["block", "redact", "flag", "off"] = "redact"
    pii_output: Literal["block", "redact", "flag", "off"] = "redact"
    pii_entities: tuple[str, ...] = DEFAULT_PII_ENTITIES
    """Presidio entity types; names and places (NER) are not available offline."""
    pii_min_score: float = Field(0.4, ge=0.0, le=1.0)
    """Presidio's phone recognizer scores 0.4 without context words, hence not higher."""
    blocked_pattern: Literal["block", "redact", "flag", "off"] = "block"
    blocked_patterns: tuple[str, ...] = ()
    """Regular expressions on the output, matched case-insensitively; reported as ``pattern_<index>``."""
    max_length: Literal["flag", "block", "off"] = "flag"
    """``flag`` truncates to ``max_output_chars`` and reports it; ``block`` refuses the answer."""
    max_output_chars: int = Field(8000, gt=0)
    refusal: Literal["flag", "block", "off"] = "flag"
    refusal_patterns: tuple[str, ...] = DEFAULT_REFUSALS
    """Regular expressions on the normalised output (lower case); reported as ``pattern_<index>``."""

    @field_validator("blocked_patterns", "refusal_patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return patterns


# ---- normalisation -------------------------------------------------------------------------------------

# Letters that render like Latin ones (Cyrillic, Greek); the common subset of Unicode's confusables.
_LOOKALIKES = str.maketrans(
    # Cyrillic a e yo k m n o r s t u kh i yi je dze komi-de shha palochka qa we, script g,
    # Greek omicron alpha iota kappa nu rho tau upsilon chi epsilon, Cyrillic izhitsa ve.
    "\u0430\u0435\u0451\u043a\u043c\u043d\u043e\u0440\u0441\u0442\u0443\u0445\u0456\u0457\u0458\u0455\u0501"
    "\u04bb\u04cf\u051b\u051d\u0261\u03bf\u03b1\u03b9\u03ba\u03bd\u03c1\u03c4\u03c5\u03c7\u03b5\u0475\u0432"
    "\u2018\u2019\u02bc\u2032\u201c\u201d",  # curly and modifier quotes
    "aeekmhopctyxiijsdhlqwgoaikvptuxevb''''\"\"",
)


def normalize(text: str) -> str:
    """The text detection rules read: NFKC, format characters (zero-width, soft hyphen) dropped,
    look-alikes folded, lower case, runs of spaces and tabs collapsed (line breaks kept)."""
    folded = unicodedata.normalize("NFKC", text)
    folded = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    folded = folded.lower().translate(_LOOKALIKES)
    return re.sub(r"[^\S\n]+", " ", folded)


# ---- injection -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InjectionRule:
    name: str
    pattern: re.Pattern[str]
    weight: float
    """How sure one match makes us, in (0, 1]; the stage fires when the combined score reaches the threshold."""


_GAP = r"(?:\W+\w+){0,5}?\W+"  # up to five words between two parts of a phrase, across line breaks

INJECTION_RULES = (
    InjectionRule("ignore_previous", re.compile(
        r"\b(?:ignore|disregard|forget|override|bypass|skip|drop)" + _GAP +
        r"(?:previous|prior|above|earlier|preceding|former|original|initial|system|all|your|the)\W+"
        r"(?:\w+\W+)?(?:instructions?|prompts?|rules|directions?|guidelines|guidance|guardrails|constraints|context"
        r"|orders|programming|training)"),
        0.9),
    InjectionRule("forget_everything", re.compile(
        r"\b(?:forget|ignore|disregard)\W+(?:everything|all|anything)\W+(?:you\W+(?:were|have been)\W+told|"
        r"above|before|so far|until now)|\b(?:forget|ignore|disregard)\W+(?:the\W+|all\W+(?:of\W+)?the\W+)?"
        r"(?:above|foregoing)\b"), 0.85),
    InjectionRule("new_instructions", re.compile(
        r"\b(?:new|updated|real|actual|override)\W+(?:system\W+)?(?:instructions?|rules|task|directive)\W*:"
        r"|\byour\W+new\W+(?:task|role|instructions?|rules|purpose)\b"), 0.6),
    InjectionRule("persona_switch", re.compile(
        r"\byou\W+are\W+(?:now|no longer)\b|\bfrom\W+now\W+on,?\W+you\W+(?:are|will|must)\b"), 0.4),
    InjectionRule("role_play", re.compile(
        r"\b(?:pretend|act|behave|roleplay|role-play)\W+(?:to\W+be\W+|as\W+(?:if\W+)?|like\W+)?"
        r"(?:you\W+(?:are|were|have)\W+)?(?:an?\W+)?(?:\w+\W+)?"
        r"(?:unfiltered|uncensored|unrestricted|evil|jailbroken|rogue|different)\b"), 0.6),
    InjectionRule("jailbreak", re.compile(
        r"\bdo\W+anything\W+now\b|\bdan\W+mode\b|\bdeveloper\W+mode\b|\bjailbr(?:eak|oken)\b|\bgod\W+mode\b"
        r"|\b(?:no|without(?:\W+any)?)\W+(?:restrictions|filters|limitations|censorship|guidelines"
        r"|content\W+policy)\b"), 0.8),
    InjectionRule("repeat_above", re.compile(
        r"\b(?:repeat|print|output|copy|write)\W+(?:everything|all|the\W+(?:words|text|lines?))\W+"
        r"(?:\w+\W+){0,2}?above\b"), 0.8),
    InjectionRule("dan_persona", re.compile(r"\b(?:you\W+are(?:\W+now)?|act\W+as|pretend\W+to\W+be)\W+dan\b"), 0.9),
    InjectionRule("system_prompt_leak", re.compile(
        r"\b(?:reveal|print|show|repeat|output|display|leak|dump|disclose|tell\W+me|what\W+(?:is|are|was|were)"
        r"|write\W+out|give\W+me)" + _GAP + r"(?:system|initial|hidden|original|secret|developer|pre-?)\W*"
        r"(?:prompt|instructions?|message|directives?)"), 0.9),
    InjectionRule("safety_bypass", re.compile(
        r"\b(?:bypass|disable|turn\W+off|deactivate|ignore|circumvent)\W+(?:\w+\W+)?"
        r"(?:safety|content|moderation|ethical|security)\W+(?:filters?|rules|guidelines|policy|policies|checks?)"),
        0.8),
    InjectionRule("special_tokens", re.compile(
        r"<\|\s*(?:im_start|im_end|system|assistant|user|endoftext|eot_id|start_header_id|end_header_id)\s*\|>"
        r"|\[/?inst\]|<<\s*/?sys\s*>>|</s>"), 0.9),
    InjectionRule("role_delimiter", re.compile(
        r"(?m)^\W{0,6}(?:#{1,6}|\[|<)?\s*(?:system|assistant|developer)\s*(?:\]|>)?\s*(?:message|prompt)?\s*:"),
        0.7),
)

_BASE64_BLOB = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
_PRINTABLE_SHARE = 0.9


def _decoded_blobs(text: str) -> Iterable[str | None]:
    """For each long base64-looking run: its decoded text, or None when it is not printable text."""
    for match in _BASE64_BLOB.finditer(text):
        blob = match.group(0)
        try:
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            yield None
            continue
        printable = sum(ch.isprintable() or ch.isspace() for ch in decoded)
        yield decoded if decoded and printable / len(decoded) >= _PRINTABLE_SHARE else None


def injection_signals(text: str, rules: Iterable[InjectionRule] = INJECTION_RULES) -> dict[str, float]:
    """The rules that match ``text`` (raw or normalised), name -> weight, including a base64 payload:
    ``encoded_injection`` (decodes to text a rule matches), ``encoded_text`` (decodes to text; a prompt
    that hides plain text in base64 is suspect on its own) or ``encoded_blob`` (binary, weak)."""
    rules = tuple(rules)
    normalized = normalize(text)
    found = {rule.name: rule.weight for rule in rules if rule.pattern.search(normalized)}
    for decoded in _decoded_blobs(text):
        if decoded is None:
            found.setdefault("encoded_blob", 0.3)
        elif any(rule.pattern.search(normalize(decoded)) for rule in rules):
            found["encoded_injection"] = 0.95
        else:
            found.setdefault("encoded_text", 0.5)
    return found


def combine(signals: Mapping[str, float]) -> float:
    """Noisy-or: the chance at least one signal is right, were they independent."""
    miss = 1.0
    for weight in signals.values():
        miss *= 1.0 - min(max(weight, 0.0), 1.0)
    return 1.0 - miss


@dataclass(frozen=True)
class StageResult:
    text: str
    hits: tuple[Hit, ...] = ()
    blocked: bool = False


def judge_injection(text: str, signals: Mapping[str, float], config: GuardrailConfig) -> StageResult:
    """One hit per signal when their combined score reaches the threshold; none below it."""
    score = combine(signals)
    if config.injection == "off" or score < config.injection_threshold:
        return StageResult(text)
    hits = tuple(Hit("injection", name, config.injection, f"score {score:.2f} >= {config.injection_threshold:.2f}")
                 for name in sorted(signals))
    return StageResult(text, hits, blocked=config.injection == "block")


# ---- output filters ------------------------------------------------------------------------------------

BLOCKED_PLACEHOLDER = "<BLOCKED>"


def check_blocked_patterns(text: str, config: GuardrailConfig) -> StageResult:
    if config.blocked_pattern == "off":
        return StageResult(text)
    hits: list[Hit] = []
    for index, pattern in enumerate(config.blocked_patterns):
        regex = re.compile(pattern, re.IGNORECASE)
        text, count = regex.subn(BLOCKED_PLACEHOLDER, text) if config.blocked_pattern == "redact" else (
            text, len(regex.findall(text)))
        if count:
            hits.append(Hit("blocked_pattern", f"pattern_{index}", config.blocked_pattern, f"{count} match(es)"))
    return StageResult(text, tuple(hits), blocked=bool(hits) and config.blocked_pattern == "block")


def check_length(text: str, config: GuardrailConfig) -> StageResult:
    limit = config.max_output_chars
    if config.max_length == "off" or len(text) <= limit:
        return StageResult(text)
    if config.max_length == "block":
        return StageResult(text[:limit], (Hit("max_length", "max_output_chars", "block",
                                               f"{len(text)} chars > {limit}"),), blocked=True)
    return StageResult(text[:limit], (Hit("max_length", "max_output_chars", "flag",
                                          f"truncated from {len(text)} to {limit} chars"),))


def check_refusal(text: str, config: GuardrailConfig) -> StageResult:
    if config.refusal == "off":
        return StageResult(text)
    normalized = normalize(text)
    # One hit per answer (the first pattern that matches): the default patterns overlap on purpose.
    index = next((i for i, pattern in enumerate(config.refusal_patterns) if re.search(pattern, normalized)), None)
    if index is None:
        return StageResult(text)
    hit = Hit("refusal", f"pattern_{index}", config.refusal, "the answer reads as a refusal")
    return StageResult(text, (hit,), blocked=config.refusal == "block")
