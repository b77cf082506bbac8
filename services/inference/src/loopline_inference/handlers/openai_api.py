"""The OpenAI-compatible HTTP API of inference's LLMs: ``POST /v1/completions``, ``POST /v1/chat/completions``
(``stream: true`` -> server-sent events in OpenAI's chunk format ending ``data: [DONE]``), ``GET /v1/models``.

The official ``openai`` client works unchanged against it. Errors are OpenAI's body
``{"error": {"message", "type", "param", "code"}}`` with 400 (bad input, a guardrail), 404 (unknown model)
or 503 (the engine is not ready); 401 without a valid ``Authorization: Bearer`` token (the ``openai``
client sends its ``api_key`` so) and 429 over the client's rate limit. Loopline's extensions ride in
the body as the client's ``extra_body`` passes them: ``prompt`` = ``{"name", "version" | "alias",
"variables"}`` names a registry prompt, and vLLM's own sampling names (``top_k``, ``min_p``,
``repetition_penalty``, ...) are accepted beside OpenAI's. A client that goes away mid-stream closes its
generation (the engine aborts the request).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable
from functools import partial
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from loopline_core.auth import REFUSED
from loopline_core.errors import ErrorKind, LooplineError, invalid
from starlette.types import Receive, Scope, Send

from loopline_inference.handlers.generate import GenerateRequest, Generator, Piece, PromptRef
from loopline_inference.handlers.oip import Admission
from loopline_inference.metrics import IN_FLIGHT

_STATUS = {ErrorKind.INVALID_ARGUMENT: (400, "invalid_request_error"), ErrorKind.NOT_FOUND: (404, "not_found_error"),
           ErrorKind.UNAVAILABLE: (503, "service_unavailable"), ErrorKind.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
           ErrorKind.DEADLINE_EXCEEDED: (504, "timeout")}

# OpenAI's request fields that are not sampling parameters (handled here, or harmless to ignore)
_CONTROL = {"model", "prompt", "messages", "stream", "stream_options", "user", "n", "echo", "logprobs",
            "top_logprobs", "suffix", "best_of", "logit_bias", "response_format", "tools", "tool_choice",
            "parallel_tool_calls", "store", "metadata", "service_tier", "max_completion_tokens"}
_UNSUPPORTED = ("echo", "logprobs", "top_logprobs", "suffix", "logit_bias", "tools", "tool_choice")


def error_body(message: str, kind: ErrorKind, param: str | None = None) -> JSONResponse:
    status, kind_name = _STATUS.get(kind, (500, "internal_error"))
    code = "model_not_found" if kind is ErrorKind.NOT_FOUND else kind.value.lower()
    return JSONResponse({"error": {"message": message, "type": kind_name, "param": param, "code": code}},
                        status_code=status)


class _Refused(Exception):  # noqa: N818 - a control-flow signal, answered as OpenAI's 401
    pass


def app(generator: Generator, admission: Admission | None = None) -> FastAPI:
    """The FastAPI application over ``generator`` (no docs pages: this is a data plane). Every route
    needs a valid bearer token (mode ``token``); completions count against the client's rate limit."""
    gate = admission or Admission()

    async def authenticate(request: Request) -> None:
        client = (gate.auth.identify_token(request.headers.get("authorization")) if gate.auth.mode == "token"
                  else gate.auth.mode)  # mtls: the TLS handshake checked the certificate
        if client is None:
            raise _Refused
        request.state.client = client

    api = FastAPI(title="Loopline inference (OpenAI-compatible)", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(authenticate)])

    @api.exception_handler(LooplineError)
    async def on_error(_request: Request, exc: LooplineError) -> JSONResponse:
        return error_body(exc.message, exc.kind, exc.details.get("param"))

    @api.exception_handler(_Refused)
    async def on_refused(_request: Request, _exc: _Refused) -> JSONResponse:
        return JSONResponse({"error": {"message": REFUSED, "type": "authentication_error", "param": None,
                                       "code": "invalid_api_key"}},
                            status_code=401, headers={"www-authenticate": "Bearer"})

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The LLMs whose engine serves now, with their version."""
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "loopline", "version": version}
            for name, version in generator.served()]}

    @api.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> JSONResponse | StreamingResponse:
        """A completion of ``prompt`` (a string) or of a registry prompt (``prompt`` as an object)."""
        return await _admitted(gate, generator, request, chat=False)

    @api.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> JSONResponse | StreamingResponse:
        """A chat completion of ``messages`` (the model's chat template applies), or of a registry prompt."""
        return await _admitted(gate, generator, request, chat=True)

    return api


async def _admitted(gate: Admission, generator: Generator, request: Request, *,
                    chat: bool) -> JSONResponse | StreamingResponse:
    """The client's rate limit, then the request, counted in flight until its last byte (a stream's too)."""
    gate.admit(getattr(request.state, "client", "unknown"))
    try:
        body = await request.json()
    except ValueError:
        raise invalid("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    model = body.get("model")
    gauge = IN_FLIGHT.labels(model if isinstance(model, str) and generator.knows(model) else "unknown")
    gauge.inc()
    try:
        response = await _serve(generator, request, body, chat=chat, done=gauge.dec)
    except BaseException:
        gauge.dec()
        raise
    if not isinstance(response, _EventStream):
        gauge.dec()
    return response


async def _serve(generator: Generator, request: Request, body: dict[str, Any], *, chat: bool,
                 done: Callable[[], object]) -> JSONResponse | StreamingResponse:
    req = _request(body, chat=chat, request_id=request.headers.get("x-request-id", ""))
    created = int(time.time())
    if not body.get("stream"):
        text, last = await generator.generate(req)
        return JSONResponse(_whole(req, text, last, created, chat))
    pieces = generator.stream(req)
    try:
        first = await anext(pieces)  # errors come before the first piece: they still get a status
    except StopAsyncIteration:
        raise LooplineError(ErrorKind.INTERNAL, "the engine answered nothing") from None
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return _EventStream(_events(req, pieces, first, created, chat, usage=usage), pieces, done,
                        media_type="text/event-stream", headers={"x-request-id": req.request_id})


def _request(body: dict[str, Any], *, chat: bool, request_id: str) -> GenerateRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required", param="model")
    if (body.get("n") or 1) != 1:
        raise invalid("only n=1 is supported", param="n")
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, False, [], {}):
            raise invalid(f"{name!r} is not supported", param=name)
    sampling = {k: v for k, v in body.items() if k not in _CONTROL}
    if body.get("max_completion_tokens") is not None:
        sampling["max_tokens"] = body["max_completion_tokens"]
    raw_prompt = body.get("prompt")
    ref = _prompt_ref(raw_prompt) if isinstance(raw_prompt, dict) else None
    text, messages = _inputs(body, chat=chat, ref=ref)
    user = body.get("user")
    return GenerateRequest(model=model, text=text, messages=messages, prompt=ref, sampling=sampling,
                           api="openai.chat" if chat else "openai.completions",
                           client=user if isinstance(user, str) else "", request_id=request_id or "")


def _inputs(body: dict[str, Any], *, chat: bool, ref: PromptRef | None) -> tuple[str | None, Any]:
    """(text, messages) of the request: a registry prompt leaves both unset."""
    if chat:
        messages = body.get("messages")
        if ref is not None:
            if messages:
                raise invalid("give either 'messages' or a registry 'prompt', not both", param="messages")
            return None, None
        if not isinstance(messages, list):
            raise invalid("'messages' must be a list", param="messages")
        return None, messages
    if ref is not None:
        return None, None
    raw = body.get("prompt")
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if not isinstance(raw, str):
        raise invalid("'prompt' must be a string (or a registry prompt object)", param="prompt")
    return raw, None


def _prompt_ref(raw: dict[str, Any]) -> PromptRef:
    name, version, alias = raw.get("name"), raw.get("version", 0), raw.get("alias", "")
    variables = raw.get("variables") or {}
    if not isinstance(name, str) or not name:
        raise invalid("a registry prompt needs a 'name'", param="prompt")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0 or not isinstance(alias, str):
        raise invalid("a registry prompt's 'version' is a positive integer and its 'alias' a string", param="prompt")
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise invalid("a registry prompt's 'variables' map names to strings", param="prompt")
    return PromptRef(name, version, alias, dict(variables))


def _usage(last: Piece) -> dict[str, int]:
    p, c = last.prompt_tokens or 0, last.completion_tokens or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _whole(req: GenerateRequest, text: str, last: Piece, created: int, chat: bool) -> dict[str, Any]:
    base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{req.request_id}", "created": created, "model": req.model,
            "usage": _usage(last)}
    if chat:
        return {**base, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": last.finish_reason}]}
    return {**base, "object": "text_completion", "choices": [
        {"index": 0, "text": text, "logprobs": None, "finish_reason": last.finish_reason}]}


async def _events(req: GenerateRequest, pieces: AsyncGenerator[Piece, None], first: Piece, created: int,
                  chat: bool, *, usage: bool) -> AsyncGenerator[bytes, None]:
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{req.request_id}"
    obj = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {"id": rid, "object": obj, "created": created, "model": req.model, "choices": choices, **extra}
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()

    def choice(piece: Piece, role: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, str] = {"role": "assistant", "content": piece.text} if role else {"content": piece.text}
            return {"index": 0, "delta": delta, "finish_reason": piece.finish_reason, "logprobs": None}
        return {"index": 0, "text": piece.text, "logprobs": None, "finish_reason": piece.finish_reason}

    try:
        yield event([choice(first, role=True)])
        last = first
        async for piece in pieces:
            last = piece
            yield event([choice(piece)])
        if usage:
            yield event([], usage=_usage(last))
        yield b"data: [DONE]\n\n"
    finally:
        await pieces.aclose()


class _EventStream(StreamingResponse):
    """A stream that notices the client going away even while the engine is quiet (whatever ASGI version
    the server speaks), and always closes its body and the generation under it (even when the body never
    started): closing the generation closes its stream in the engine."""

    def __init__(self, content: AsyncGenerator[bytes, None], generation: AsyncGenerator[Piece, None],
                 done: Callable[[], object], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._content = content
        self._generation = generation
        self._done = done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._run(scope, receive, send)
        finally:
            self._done()  # no longer in flight

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:
            async def streamed() -> None:
                try:
                    await self.stream_response(send)
                except OSError:  # the client went away between two sends
                    pass
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._content.aclose()
                        await self._generation.aclose()
                    group.cancel_scope.cancel()

            async def disconnected() -> None:
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()

            group.start_soon(streamed)
            group.start_soon(partial(disconnected))
