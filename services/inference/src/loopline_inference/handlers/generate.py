"""The generate use case, shared by the OpenAI-compatible HTTP API and OIP's generate over gRPC.

One request: resolve the prompt (a registry prompt version rendered with its variables, or raw text, or
chat messages), check the sampling parameters, run the input guardrails, stream from the model's vLLM
engine while the output guardrails watch the accumulated answer, and record one ``Generation`` (redacted
texts, prompt version, model version, sampling, tokens, cost, latency, TTFT, outcome) whatever happened:
ok, blocked, cancelled (the caller went away: the engine stream is closed, vLLM aborts the request) or
error. Every error is a :class:`LooplineError` raised before the first piece.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from loopline.llm.v1.events_pb2 import Generation, GuardrailHit, GuardrailTriggered
from loopline.registry.v1 import registry_pb2
from loopline_core.errors import ErrorKind, LooplineError, invalid
from loopline_core.events import metadata
from loopline_llm.client import Chunk
from loopline_ml.prompt import PromptError, canonical_sampling, render
from loopline_ml.sampling import SamplingError, merge, validate

from loopline_inference.adapters.generation_log import GenerationLog
from loopline_inference.adapters.llm import LlmRepository, ServedLlm
from loopline_inference.domain.pricing import PriceTable
from loopline_inference.metrics import LLM_COST, LLM_REQUESTS, LLM_TOKEN_LATENCY, LLM_TOKENS, LLM_TTFT

log = logging.getLogger(__name__)

APIS = ("openai.completions", "openai.chat", "oip")


@dataclass(frozen=True)
class PromptRef:
    """A registry prompt: by ``version``, else by ``alias``, else its latest version."""

    name: str
    version: int = 0
    alias: str = ""
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    text: str | None = None
    """A raw prompt (completions); exactly one of text, messages and prompt."""
    messages: list[dict[str, str]] | None = None
    """Chat messages ``[{"role", "content"}]``; the engine applies the model's chat template."""
    prompt: PromptRef | None = None
    """A registry prompt, rendered with its variables."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """vLLM's names: temperature, top_p, top_k, max_tokens, seed, stop, ..."""
    api: str = "oip"
    client: str = ""
    request_id: str = ""
    """"" -> a new uuid4 hex."""


@dataclass(frozen=True)
class Piece:
    """Text to send now; the last piece carries the finish reason and the token usage."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Verdict(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def hits(self) -> Sequence[Any]: ...
    @property
    def blocked(self) -> bool: ...


class Guardrails(Protocol):
    """What the use case needs of the guardrails (``adapters.guardrails.Guardrails``)."""

    def check_input(self, text: str, *, model: str) -> Verdict: ...
    def check_output(self, text: str, *, model: str) -> Verdict: ...
    def preview_output(self, text: str, *, model: str) -> Verdict: ...
    def redact(self, text: str) -> str: ...


class Prompts(Protocol):
    """What the use case needs of the registry client."""

    async def get_prompt(self, name: str, version: int = 0, alias: str = "") -> registry_pb2.PromptVersion: ...


@dataclass
class _Call:
    """What one request accumulates for its Generation record."""

    req: GenerateRequest
    request_id: str
    started: float = field(default_factory=time.monotonic)
    version: int = 0
    variant: str = "vllm"
    prompt: registry_pb2.PromptVersion | None = None
    sampling_json: str = "{}"
    input_text: str = ""
    output_text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    finish_reason: str = ""
    hits: list[GuardrailHit] = field(default_factory=list)
    outcome: str = "error"
    blocked_stage: str = ""
    streamed: bool = True
    chunks: int = 0
    """Text chunks the engine sent (about one a token): the count of an aborted answer, which has no usage."""


@dataclass(frozen=True)
class _Plan:
    served: ServedLlm
    params: dict[str, Any]
    chat: bool


class Generator:
    def __init__(self, engines: LlmRepository, prompts_: Prompts, generation_log: GenerationLog,
                 prices: PriceTable, guardrails: Guardrails | None = None, *, max_prompt_chars: int = 8000,
                 holdback_chars: int = 0) -> None:
        self._engines = engines
        self._prompts = prompts_
        self._log = generation_log
        self._prices = prices
        self._guardrails = guardrails
        self.max_prompt_chars = max_prompt_chars
        self.holdback_chars = holdback_chars
        """A stream also holds back this many trailing characters (besides a partial word), so PII written
        across words (a card number in groups of four) is whole before the output check sees it."""

    def ready(self, model: str) -> bool:
        return self._engines.ready(model)

    def served(self) -> list[tuple[str, int]]:
        """(model name, version) of every LLM whose engine serves now."""
        return self._engines.served()

    def knows(self, model: str) -> bool:
        """Whether ``model`` is one of the LLMs this service serves (ready or not)."""
        return model in self._engines.names

    async def stream(self, req: GenerateRequest) -> AsyncGenerator[Piece, None]:
        """Pieces of the answer as the engine writes them (what the output guardrails let through, a partial
        word held back); the last carries the finish reason and usage. Errors come before the first piece."""
        call = _Call(req, req.request_id or uuid.uuid4().hex)
        # closed explicitly (not left to the garbage collector): the caller going away closes the engine stream
        async with contextlib.aclosing(self._run(call)) as pieces:
            async for piece in pieces:
                yield piece

    async def generate(self, req: GenerateRequest) -> tuple[str, Piece]:
        """The whole answer and the last piece (finish reason, usage). A blocked answer is INVALID_ARGUMENT."""
        call = _Call(req, req.request_id or uuid.uuid4().hex, streamed=False)
        parts: list[str] = []
        last = Piece("")
        async with contextlib.aclosing(self._run(call)) as pieces:
            async for piece in pieces:
                parts.append(piece.text)
                last = piece
        if call.blocked_stage:
            raise invalid(f"the answer was refused by the {call.blocked_stage} guardrail", stage=call.blocked_stage)
        return "".join(parts), last

    # ---- one request ------------------------------------------------------------------------------

    async def _run(self, call: _Call) -> AsyncGenerator[Piece, None]:
        try:
            plan = await self._prepare(call)
            async with contextlib.aclosing(self._engine(call, plan)) as pieces:
                async for piece in pieces:
                    yield piece
        except LooplineError as exc:
            call.outcome = "blocked" if call.blocked_stage else "error"
            call.finish_reason = call.finish_reason or ("content_filter" if call.blocked_stage else "error")
            if exc.kind is not ErrorKind.INVALID_ARGUMENT or call.blocked_stage:
                log.warning("generation failed", extra={"request_id": call.request_id, "model": call.req.model,
                                                        "kind": exc.kind.value})
            raise
        except (GeneratorExit, asyncio.CancelledError):
            call.outcome, call.finish_reason = "cancelled", "abort"
            call.completion_tokens = call.completion_tokens or call.chunks  # no usage comes from an aborted stream
            raise
        finally:
            self._record(call)

    async def _prepare(self, call: _Call) -> _Plan:
        req = call.req
        if req.api not in APIS:
            raise invalid(f"unknown api {req.api!r}")
        if not self.knows(req.model):
            raise LooplineError(ErrorKind.NOT_FOUND, f"unknown model {req.model!r}")
        given = [x is not None for x in (req.text, req.messages, req.prompt)]
        if sum(given) != 1:
            raise invalid("give exactly one of a prompt text, chat messages or a registry prompt")
        params = dict(req.sampling)
        text, messages = req.text, req.messages
        if req.prompt is not None:
            p = await self._prompt(req.prompt, req.model)
            call.prompt = p
            try:
                rendered = render(p.template, req.prompt.variables)
                defaults = json.loads(p.sampling_parameters) if p.sampling_parameters.strip() else {}
            except (PromptError, ValueError) as e:
                raise invalid(str(e)) from None
            params = merge(defaults if isinstance(defaults, dict) else {}, params)
            if req.api == "openai.chat":
                messages = [{"role": "user", "content": rendered}]
            else:
                text = rendered
        try:
            checked = validate(params)
        except SamplingError as e:
            raise invalid(str(e)) from None
        call.sampling_json = canonical_sampling(checked)
        if messages is not None:
            messages = self._check_messages(call, messages)
        else:
            text = self._check_text(call, text or "")
        served = self._engines.get(req.model)
        if served is None:
            raise LooplineError(ErrorKind.UNAVAILABLE, f"the LLM {req.model!r} is not ready")
        call.version, call.variant = served.version, served.variant
        body: dict[str, Any] = {**checked, **({"messages": messages} if messages is not None else {"prompt": text})}
        return _Plan(served, body, messages is not None)

    async def _prompt(self, ref: PromptRef, model: str) -> registry_pb2.PromptVersion:
        try:
            p = await self._prompts.get_prompt(ref.name, version=ref.version, alias=ref.alias)
        except LooplineError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                which = f"version {ref.version}" if ref.version else f"alias {ref.alias!r}" if ref.alias else "latest"
                raise invalid(f"unknown prompt version: {ref.name!r} {which}") from None
            raise
        if p.model_name and p.model_name != model:
            raise invalid(f"prompt {p.name!r} v{p.version} is bound to model {p.model_name!r}, not {model!r}")
        return p

    def _check_text(self, call: _Call, text: str) -> str:
        if not text.strip():
            raise invalid("the prompt is empty")
        if len(text) > self.max_prompt_chars:
            raise invalid(f"the prompt has {len(text)} characters; at most {self.max_prompt_chars} are accepted")
        call.input_text = self._redact(text)
        return self._guard_input(call, text)

    def _check_messages(self, call: _Call, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if not messages:
            raise invalid("the chat has no messages")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise invalid("each chat message needs a string role and content")
        total = sum(len(m["content"]) for m in messages)
        if not any(m["content"].strip() for m in messages):
            raise invalid("the prompt is empty")
        if total > self.max_prompt_chars:
            raise invalid(f"the chat has {total} characters; at most {self.max_prompt_chars} are accepted")
        call.input_text = "\n".join(f"{m['role']}: {self._redact(m['content'])}" for m in messages)
        return [{**m, "content": self._guard_input(call, m["content"])} for m in messages]

    def _guard_input(self, call: _Call, text: str) -> str:
        if self._guardrails is None:
            return text
        verdict = self._guardrails.check_input(text, model=call.req.model)
        call.hits += [_hit(h) for h in verdict.hits]
        if verdict.blocked:
            call.blocked_stage = next((h.stage for h in call.hits if h.action == "block"), "input")
            raise invalid(f"the prompt was refused by the {call.blocked_stage} guardrail", stage=call.blocked_stage)
        return verdict.text

    async def _engine(self, call: _Call, plan: _Plan) -> AsyncGenerator[Piece, None]:
        raw, safe, sent = "", "", 0
        blocked = False
        finish: str | None = None
        # the client's stream is an async generator (typed as an iterator): closed explicitly, as the caller's
        stream = cast("AsyncGenerator[Chunk, None]", plan.served.client.stream(plan.params, chat=plan.chat))
        async with contextlib.aclosing(stream) as chunks:
            async for chunk in chunks:
                if chunk.prompt_tokens is not None:
                    call.prompt_tokens = chunk.prompt_tokens
                    call.completion_tokens = chunk.completion_tokens or 0
                finish = chunk.finish_reason or finish
                if not chunk.text:
                    continue
                call.chunks += 1
                if call.first_token_at is None:
                    call.first_token_at = time.monotonic()
                raw += chunk.text
                if not any(c.isspace() for c in chunk.text):
                    continue  # nothing new could be sent (a partial word is held back): check at a word's end
                safe, blocked = self._guard_output(call, raw, final=False)
                if blocked:
                    break  # closing the engine stream aborts the request in vLLM
                ready = safe[:max(len(safe) - self.holdback_chars, 0)]
                cut = max(ready.rfind(" "), ready.rfind("\n")) + 1
                if cut > sent:
                    yield Piece(safe[sent:cut])
                    sent = cut
        safe, blocked = self._guard_output(call, raw, final=True)  # counted once, on the whole answer
        if blocked:
            call.blocked_stage = next((h.stage for h in call.hits if h.action == "block"), "output")
            call.outcome, call.finish_reason = "blocked", "content_filter"
            call.completion_tokens = call.completion_tokens or call.chunks
            call.output_text = self._redact(safe[:sent])
            yield Piece("", "content_filter", call.prompt_tokens, call.completion_tokens)
            return
        call.outcome, call.finish_reason = "ok", finish or "stop"
        call.output_text = self._redact(safe)
        yield Piece(safe[sent:], call.finish_reason, call.prompt_tokens, call.completion_tokens)

    def _guard_output(self, call: _Call, text: str, *, final: bool) -> tuple[str, bool]:
        """The text the output guardrails let through; a partial answer is previewed (not counted)."""
        if self._guardrails is None:
            return text, False
        check = self._guardrails.check_output if final else self._guardrails.preview_output
        verdict = check(text, model=call.req.model)
        # the check runs on the whole text so far: keep only the latest round's hits
        call.hits = [h for h in call.hits if h.stage in _INPUT_STAGES] + [_hit(h) for h in verdict.hits]
        return verdict.text, verdict.blocked

    def _redact(self, text: str) -> str:
        return self._guardrails.redact(text) if self._guardrails is not None else text

    # ---- the record -------------------------------------------------------------------------------

    def _record(self, call: _Call) -> None:
        req = call.req
        now = time.monotonic()
        latency_ms = (now - call.started) * 1000
        first = call.first_token_at if call.streamed and call.first_token_at is not None else now
        ttft_ms = (first - call.started) * 1000
        cost, currency = self._prices.cost(req.model, call.variant, call.prompt_tokens, call.completion_tokens)
        p = call.prompt
        g = Generation(metadata=metadata("inference", correlation_id=call.request_id), request_id=call.request_id,
                       model_name=req.model, model_version=call.version, variant=call.variant,
                       prompt_name=p.name if p else "", prompt_version=p.version if p else 0,
                       prompt_digest=p.digest if p else "", sampling_parameters=call.sampling_json,
                       input_text=call.input_text, output_text=call.output_text,
                       prompt_tokens=call.prompt_tokens, completion_tokens=call.completion_tokens, cost=cost,
                       currency=currency, latency_ms=latency_ms, ttft_ms=ttft_ms, finish_reason=call.finish_reason,
                       refused=any(h.stage == "refusal" for h in call.hits), guardrails=call.hits,
                       outcome=call.outcome, api=req.api, client=req.client)
        triggered = None
        if call.hits:
            what = ("blocked" if call.outcome == "blocked" else
                    "redacted" if any(h.action == "redact" for h in call.hits) else "flagged")
            triggered = GuardrailTriggered(metadata=metadata("inference", correlation_id=call.request_id),
                                           request_id=call.request_id, model_name=req.model,
                                           model_version=call.version, hits=call.hits, outcome=what)
        if self.knows(req.model):  # an unknown model has no topic
            self._log.record(g, triggered)
        version = str(call.version)
        LLM_REQUESTS.labels(req.model, req.api, call.outcome).inc()
        if call.prompt_tokens or call.completion_tokens:
            LLM_TOKENS.labels(req.model, version, call.variant, "prompt").inc(call.prompt_tokens)
            LLM_TOKENS.labels(req.model, version, call.variant, "completion").inc(call.completion_tokens)
        if currency:
            LLM_COST.labels(req.model, version, call.variant, currency).inc(cost)
        if call.first_token_at is not None:
            LLM_TTFT.labels(req.model).observe(call.first_token_at - call.started)
            if call.completion_tokens > 1:
                LLM_TOKEN_LATENCY.labels(req.model).observe((now - call.first_token_at) / (call.completion_tokens - 1))
        # one line per generation, ids and figures only: texts are never logged
        log.info("generation", extra={
            "request_id": call.request_id, "model": req.model, "model_version": call.version, "api": req.api,
            "prompt": f"{p.name}@{p.version}" if p else "", "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens, "cost": cost, "currency": currency,
            "outcome": call.outcome, "finish_reason": call.finish_reason, "latency_ms": round(latency_ms, 1),
            "ttft_ms": round(ttft_ms, 1), "guardrails": sorted({h.stage for h in call.hits})})


_INPUT_STAGES = frozenset({"injection", "pii_input"})


def _hit(h: Any) -> GuardrailHit:
    return GuardrailHit(stage=str(getattr(h, "stage", "")), rule=str(getattr(h, "rule", "")),
                        action=str(getattr(h, "action", "")), detail=str(getattr(h, "detail", "")))
