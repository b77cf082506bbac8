"""LLM benchmark: the same prompts through Loopline's OpenAI-compatible API and through vLLM's own OpenAI
server, same engine settings, same run.

    python -m bench llm [--rounds 3] [--batch 32] [--streams 256] [--tokens 16]

It starts its own local stack, the registry and inference as processes, builds (or reuses) the tiny Llama,
signs and registers it; inference verifies it and starts its vLLM engine (vLLM's OpenAI server, a child
process). The peer is that same engine called directly at its own address (from inference's log line
``serving new LLM version``): one engine, one model, one set of settings, so the difference is exactly what
Loopline adds in front of it. Both are driven by the official ``openai`` async client. Per round, each side in
turn (taking turns first, so neither always runs on a warmer machine):

1. ``batch``: 32 different prompts sent at once, non-streaming, 16 new tokens each (``ignore_eos``, so every
   answer is exactly 16 tokens), temperature 0; throughput = completion tokens / wall time of the batch;
2. ``streams``: 256 concurrent streaming requests, 16 new tokens each; TTFT = time from sending a request to its
   first content chunk (p50/p99 over the 256), throughput = completion tokens / wall time of the whole set.

Loopline's side is the whole LLM path: request validation, guardrails (injection heuristics and Presidio's PII
redaction on the input and the output), the engine stream relayed as server-sent events, token and cost
accounting, and one ``Generation`` event published per request. Figures go to the terminal and to
``bench/results/llm-<utc time>.json``. Where a GPU machine is lent, run it there with CUDA vLLM in
``LOOPLINE_VLLM_PYTHON``'s venv and report those figures separately.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopline_core.auth import ClientCredentials, client_env
from rich.console import Console
from rich.table import Table

from bench.common import ROOT, cli, code_under_test, machine, print_context

MODEL = "tiny-llama"
MEASURED_PATHS = ["services/inference", "libs/llm"]
console = Console()


def prompts(n: int) -> list[str]:
    from loopline_llm.corpus import TOPICS, questions  # noqa: PLC0415

    per = -(-n // len(TOPICS))
    qs = [q for topic in sorted(TOPICS) for q in questions(topic, per, seed=3)]
    return [f"Customer: {q}\nAgent:" for q in qs[:n]]


async def batch(client: Any, texts: list[str], tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    answers = await asyncio.gather(*[
        client.completions.create(model=MODEL, prompt=t, max_tokens=tokens, temperature=0,
                                  extra_body={"ignore_eos": True}) for t in texts])
    wall = time.perf_counter() - started
    produced = sum(a.usage.completion_tokens for a in answers)
    return {"wall_s": wall, "completion_tokens": produced, "tokens_per_s": produced / wall}


async def streams(client: Any, texts: list[str], tokens: int) -> dict[str, float]:
    async def one(text: str) -> tuple[float, int]:
        sent = time.perf_counter()
        first = 0.0
        pieces = 0
        stream = await client.completions.create(model=MODEL, prompt=text, max_tokens=tokens, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                if not first:
                    first = time.perf_counter() - sent
                pieces += 1
        return first, pieces

    started = time.perf_counter()
    results = await asyncio.gather(*[one(t) for t in texts])
    wall = time.perf_counter() - started
    ttft = sorted(r[0] for r in results)
    produced = len(texts) * tokens
    return {"wall_s": wall, "completion_tokens": produced, "tokens_per_s": produced / wall,
            "ttft_p50_ms": 1000 * ttft[len(ttft) // 2], "ttft_p99_ms": 1000 * ttft[min(len(ttft) - 1,
                                                                                    int(len(ttft) * 0.99))],
            "chunks_per_stream": statistics.mean(r[1] for r in results)}


async def rounds(args: argparse.Namespace, urls: dict[str, str]) -> list[dict[str, Any]]:
    import httpx  # noqa: PLC0415
    from openai import AsyncOpenAI  # noqa: PLC0415

    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=1024, max_keepalive_connections=1024),
                             timeout=300)
    key = ClientCredentials.from_env().api_key()  # the peer engine ignores it
    clients = {side: AsyncOpenAI(base_url=f"{url}/v1", api_key=key, http_client=http, max_retries=0)
               for side, url in urls.items()}
    batch_texts = prompts(args.batch)
    stream_texts = (prompts(args.streams) * 2)[:args.streams]
    for client in clients.values():  # warm both (first requests compile and fill caches)
        await batch(client, batch_texts[:4], args.tokens)
    out = []
    try:
        for k in range(args.rounds):
            order = list(clients) if k % 2 == 0 else list(reversed(clients))
            row: dict[str, Any] = {"round": k + 1, "order": order}
            for side in order:
                row[side] = {"batch": await batch(clients[side], batch_texts, args.tokens),
                             "streams": await streams(clients[side], stream_texts, args.tokens)}
                console.print(f"  round {k + 1} {side}: batch {row[side]['batch']['tokens_per_s']:.0f} tok/s, "
                              f"streams {row[side]['streams']['tokens_per_s']:.0f} tok/s, "
                              f"TTFT p50 {row[side]['streams']['ttft_p50_ms']:.0f} ms")
            out.append(row)
    finally:
        await http.aclose()
    return out


def summarise(rs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(side: str, part: str, key: str) -> float:
        return statistics.median(r[side][part][key] for r in rs)

    s: dict[str, Any] = {}
    for side in ("loopline", "vllm"):
        s[side] = {"batch_tokens_per_s": med(side, "batch", "tokens_per_s"),
                   "streams_tokens_per_s": med(side, "streams", "tokens_per_s"),
                   "ttft_p50_ms": med(side, "streams", "ttft_p50_ms"),
                   "ttft_p99_ms": med(side, "streams", "ttft_p99_ms")}
    lo, v = s["loopline"], s["vllm"]
    s["overhead"] = {"batch_throughput": 1 - lo["batch_tokens_per_s"] / v["batch_tokens_per_s"],
                     "streams_throughput": 1 - lo["streams_tokens_per_s"] / v["streams_tokens_per_s"],
                     "ttft_p50": lo["ttft_p50_ms"] / v["ttft_p50_ms"] - 1,
                     "ttft_p99": lo["ttft_p99_ms"] / v["ttft_p99_ms"] - 1}
    return s


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loopline_core.kafka import TopicNamer, ensure_topics  # noqa: PLC0415
    from loopline_llm.engine import EngineConfig  # noqa: PLC0415
    from loopline_llm.tiny import cached  # noqa: PLC0415
    from loopline_stack.services import ServiceSet  # noqa: PLC0415
    from loopline_stack.stack import Stack, StackConfig  # noqa: PLC0415
    from loopline_testing.llm import register_tiny  # noqa: PLC0415

    from bench.common import create_database  # noqa: PLC0415

    code = code_under_test(MEASURED_PATHS)
    load_before = os.getloadavg()
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}"
    work = ROOT / ".loopline" / f"bench-{run_id}"
    model_dir = cached(progress=console.print)
    stack = Stack(StackConfig(state_dir=work / "stack", timeout_s=90), progress=lambda m: console.print(f"  {m}"))
    console.print(f"[bold]LLM benchmark[/] (logs in {work / 'logs'})")
    state = stack.up()
    os.environ.update(client_env(state.env))  # the benchmark calls the services as the operator
    services: ServiceSet | None = None
    try:
        suffix = uuid.uuid4().hex[:10]
        prefix = f"b{suffix}"
        namer = TopicNamer(prefix)
        asyncio.run(ensure_topics(state.env["LOOPLINE_KAFKA_BOOTSTRAP"], namer.platform_topics(), partitions=1))
        dsn = asyncio.run(create_database(state.env["LOOPLINE_POSTGRES_DSN"], f"b_{suffix}"))
        env = {**state.env, "LOOPLINE_POSTGRES_DSN": dsn, "LOOPLINE_TOPIC_PREFIX": prefix}
        services = ServiceSet(env, work / "logs", {"inference": {
            "LOOPLINE_INFERENCE_MODELS": "[]", "LOOPLINE_INFERENCE_LLM_MODELS": f'["{MODEL}"]',
            "LOOPLINE_INFERENCE_LLM_WORKDIR": str(work / "llm")}})
        services.start(progress=lambda m: console.print(f"  {m}"), names=("registry", "inference"))
        # inference hears the registration (a model event) and starts its engine on the verified artifact
        asyncio.run(register_tiny(env, services.addr("registry"), model_dir))
        asyncio.run(_wait_served(services.http_url(), args.timeout))
        figures = asyncio.run(rounds(args, {"loopline": services.http_url(),
                                            "vllm": engine_url(services.running["inference"].log)}))
    finally:
        if services is not None:
            services.stop()
        stack.down()
    return {"benchmark": "llm", "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "code": code,
            "params": {"rounds": args.rounds, "batch": args.batch, "streams": args.streams, "tokens": args.tokens,
                       "engine": dataclasses.asdict(EngineConfig()),
                       "model": str(Path(model_dir).name)},
            "machine": machine(load_before),
            "method": "one vLLM engine (inference's child, EngineConfig defaults); loopline = inference's OpenAI "
                      "API (validation, guardrails, accounting, Generation events) in front of it; vllm = the "
                      "same engine's own OpenAI server called directly; the official openai async client on "
                      "both; sides in turns, alternating who goes first; medians over rounds",
            "summary": summarise(figures), "rounds": figures}


def engine_url(log: Path) -> str:
    """The address of the engine inference serves the model with (its log says it once the engine answers)."""
    for line in log.read_text(errors="replace").splitlines():
        if '"engine_url"' in line:
            return str(json.loads(line)["engine_url"])
    raise RuntimeError(f"inference did not log its engine's address; see {log}")


async def _wait_served(url: str, timeout_s: float) -> None:
    import httpx  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                models = (await http.get(f"{url}/v1/models")).json().get("data", [])
                if any(m.get("id") == MODEL for m in models):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(1)
    raise RuntimeError(f"inference did not serve {MODEL} within {timeout_s:.0f}s")


def show(result: dict[str, Any]) -> None:
    p, s = result["params"], result["summary"]
    out = Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title=f"LLM serving: batch {p['batch']} x {p['tokens']} tokens, {p['streams']} concurrent "
                        f"streams, {p['rounds']} rounds (medians), commit {result['code']['commit']}")
    for col in ("", "batch tok/s", "streams tok/s", "TTFT p50 ms", "TTFT p99 ms"):
        table.add_column(col, justify="right" if col else "left")
    for side in ("loopline", "vllm"):
        x = s[side]
        table.add_row(side, f"{x['batch_tokens_per_s']:,.0f}", f"{x['streams_tokens_per_s']:,.0f}",
                      f"{x['ttft_p50_ms']:.0f}", f"{x['ttft_p99_ms']:.0f}")
    o = s["overhead"]
    table.add_row("[bold]Loopline overhead[/]", f"{o['batch_throughput']:+.1%}", f"{o['streams_throughput']:+.1%}",
                  f"{o['ttft_p50']:+.1%}", f"{o['ttft_p99']:+.1%}")
    out.print(table)
    out.print("overhead: throughput lost (positive = slower) and TTFT added, relative to vLLM's own server")
    print_context(out, result)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench llm", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--timeout", type=float, default=400.0, help="seconds an engine may take to start")
    args = p.parse_args(argv)
    if min(args.rounds, args.batch, args.streams, args.tokens) < 1:
        p.error("--rounds, --batch, --streams and --tokens must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    cli("llm", parse_args(argv), run, show, console)


if __name__ == "__main__":
    main()
