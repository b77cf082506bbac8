"""An async client of a vLLM OpenAI server: streamed completions with token usage, cancellable.

Closing a stream early (the caller went away) closes its HTTP response; vLLM then aborts the request in
the engine, so an abandoned generation stops using the batch.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from loopline_core.errors import ErrorKind, LooplineError


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed answer; the last one carries the finish reason, the usage comes once."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class EngineClient:
    """Talks to one engine (``base_url``) about one served model name."""

    def __init__(self, base_url: str, model: str, *, max_connections: int = 1024, timeout_s: float = 300.0) -> None:
        self.base_url = base_url
        self.model = model
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=base_url, limits=limits,
                                       timeout=httpx.Timeout(timeout_s, connect=5.0))

    async def close(self) -> None:
        await self._http.aclose()

    async def stream(self, params: dict[str, Any], *, chat: bool = False) -> AsyncIterator[Chunk]:
        """Stream ``/v1/completions`` (or chat) with ``params`` (prompt or messages, sampling parameters).

        Raises INVALID_ARGUMENT with the engine's message when it refuses the request (a prompt longer
        than the model's context, parameters it rejects), UNAVAILABLE when it cannot be reached.
        """
        body = {**params, "model": self.model, "stream": True, "stream_options": {"include_usage": True}}
        path = "/v1/chat/completions" if chat else "/v1/completions"
        try:
            async with self._http.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    raise _refusal(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        return
                    yield _chunk(json.loads(data), chat)
        except httpx.TransportError as e:
            raise LooplineError(ErrorKind.UNAVAILABLE, f"the LLM engine is unreachable: {type(e).__name__}") from e

    async def complete(self, params: dict[str, Any], *, chat: bool = False) -> tuple[str, Chunk]:
        """The whole answer and its last chunk (finish reason, usage), through the same stream."""
        parts: list[str] = []
        finish: str | None = None
        prompt_tokens = completion_tokens = 0
        async for c in self.stream(params, chat=chat):
            parts.append(c.text)
            finish = c.finish_reason or finish
            if c.prompt_tokens is not None:
                prompt_tokens, completion_tokens = c.prompt_tokens, c.completion_tokens or 0
        return "".join(parts), Chunk("", finish, prompt_tokens, completion_tokens)

    async def metrics(self) -> str:
        """The engine's Prometheus exposition (``vllm:num_requests_running`` and the rest)."""
        return (await self._http.get("/metrics")).text

    async def healthy(self) -> bool:
        try:
            return (await self._http.get("/health", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False


def _chunk(event: dict[str, Any], chat: bool) -> Chunk:
    usage = event.get("usage") or {}
    choices = event.get("choices") or []
    text, finish = "", None
    if choices:
        choice = choices[0]
        text = (choice.get("delta") or {}).get("content") or "" if chat else choice.get("text") or ""
        finish = choice.get("finish_reason")
    return Chunk(text, finish, usage.get("prompt_tokens"), usage.get("completion_tokens"))


def _refusal(status: int, body: bytes) -> LooplineError:
    try:
        message = json.loads(body).get("error", {}).get("message", "") or body.decode(errors="replace")
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")
    kind = ErrorKind.INVALID_ARGUMENT if 400 <= status < 500 else ErrorKind.UNAVAILABLE
    return LooplineError(kind, f"the LLM engine refused the request ({status}): {message[:500]}")
