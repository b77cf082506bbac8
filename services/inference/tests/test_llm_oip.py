"""LLM generate over OIP gRPC, as Triton's vLLM backend speaks it, through ``tritonclient.grpc`` unchanged.

One real vLLM engine (CPU) serves the tiny Llama for the whole module: inference and the registry run as
their own processes on an isolated topic prefix and database, started once (an engine start costs tens of
seconds here). The fraud model is served beside it.
"""

from __future__ import annotations

import asyncio
import json
import queue
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from loopline.llm.v1.events_pb2 import Generation
from loopline.registry.v1 import registry_pb2, registry_pb2_grpc
from loopline_core import grpcx
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.kafka import TopicNamer
from loopline_inference.handlers import oip_generate
from loopline_inference.handlers.generate import Piece
from loopline_stack import StackState
from loopline_stack.services import ServiceSet
from loopline_testing.builders import FEATURES, make_model, read_fenced, register_signed_model, set_alias
from loopline_testing.llm import register_tiny, tiny_llm  # noqa: F401 - a fixture
from loopline_testing.plugin import isolate
from tritonclient.grpc import _utils as tg_utils
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

MODEL = "tiny-llama"
PROMPT = "Customer: my card was charged twice for one order\nAgent:"
GREEDY = {"temperature": 0, "max_tokens": 24}

pytestmark = pytest.mark.timeout(900)


@dataclass
class Served:
    env: dict[str, str]
    svc: ServiceSet
    namer: TopicNamer

    @property
    def addr(self) -> str:
        return self.svc.addr("inference")


@pytest.fixture(scope="module")
async def served(stack: StackState, tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
                 ) -> AsyncIterator[Served]:
    """Registry and inference for this module, the fraud champion and the tiny Llama's champion served."""
    env = await isolate(stack.env)
    svc = ServiceSet(env, tmp_path_factory.mktemp("llm-oip") / "logs", {"inference": {
        "LOOPLINE_INFERENCE_LLM_MODELS": json.dumps([MODEL]), "LOOPLINE_INFERENCE_RECONCILE_S": "2"}})
    await asyncio.to_thread(svc.start, names=("registry", "inference"))
    try:
        fraud = await register_signed_model(env, svc.addr("registry"), "fraud", seed=1)
        await set_alias(svc.addr("registry"), "fraud", "champion", fraud.version)
        await register_tiny(env, svc.addr("registry"), tiny_llm)
        client = grpcx.with_auth(tg.InferenceServerClient(svc.addr("inference")))
        async with asyncio.timeout(420):  # fetch, verify, start vLLM (20-60 s here, more on a busy machine)
            while not (client.is_model_ready(MODEL) and client.is_model_ready("fraud")):
                assert svc.alive()["inference"], "inference exited"
                await asyncio.sleep(1.0)
        yield Served(env, svc, TopicNamer(env["LOOPLINE_TOPIC_PREFIX"]))
    finally:
        await asyncio.to_thread(svc.stop)


# ---- helpers -----------------------------------------------------------------------------------------


def _bytes(name: str, value: str | bytes) -> tg.InferInput:
    inp = tg.InferInput(name, [1], "BYTES")
    inp.set_data_from_numpy(np.array([value.encode() if isinstance(value, str) else value], dtype=np.object_))
    return inp


def _bool(name: str, value: bool) -> tg.InferInput:
    inp = tg.InferInput(name, [1], "BOOL")
    inp.set_data_from_numpy(np.array([value], dtype=bool))
    return inp


def _inputs(text: str | None = PROMPT, *, stream: bool | None = None, sampling: dict[str, Any] | str | None = None,
            exclude: bool | None = None, **extra: str | bool) -> list[tg.InferInput]:
    out = [] if text is None else [_bytes("text_input", text)]
    if stream is not None:
        out.append(_bool("stream", stream))
    if sampling is not None:
        out.append(_bytes("sampling_parameters", sampling if isinstance(sampling, str) else json.dumps(sampling)))
    if exclude is not None:
        out.append(_bool("exclude_input_in_output", exclude))
    for name, value in extra.items():
        out.append(_bool(name, value) if isinstance(value, bool) else _bytes(name, value))
    return out


def _text(result: tg.InferResult) -> str:
    arr = result.as_numpy("text_output")
    return "" if arr is None else b"".join(arr.ravel()).decode()


def _final(result: tg.InferResult) -> bool:
    p = result.get_response().parameters.get("triton_final_response")
    return p is not None and p.bool_param


class Stream:
    """tritonclient's callback stream, read as a queue of (result, error)."""

    def __init__(self, addr: str) -> None:
        self.client = grpcx.with_auth(tg.InferenceServerClient(addr))
        self.q: queue.Queue[tuple[tg.InferResult | None, InferenceServerException | None]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.q.put((result, error)))

    def send(self, inputs: list[tg.InferInput], request_id: str, model: str = MODEL) -> None:
        self.client.async_stream_infer(model, inputs, request_id=request_id)

    def until_final(self, timeout: float = 120.0) -> Iterator[tuple[tg.InferResult | None, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            result, error = self.q.get(timeout=max(0.1, deadline - time.monotonic()))
            yield result, error
            if error is not None or (result is not None and _final(result)):
                return

    def close(self, *, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def _invalid(call: Any) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    return str(info.value.message())


# ---- the translation alone (no server) ---------------------------------------------------------------


def _request(inputs: list[tg.InferInput], *, outputs: list[str] | None = None,
             parameters: dict[str, Any] | None = None) -> pb.ModelInferRequest:
    """The request tritonclient puts on the wire for these inputs."""
    req: pb.ModelInferRequest = tg_utils._get_inference_request(
        MODEL, inputs, "", "r-1", [tg.InferRequestedOutput(o) for o in outputs] if outputs else None, 0, False,
        False, 0, None, parameters)
    return req


def test_a_request_read_as_the_vllm_backend_reads_it() -> None:
    g = oip_generate.parse(_request(_inputs(sampling={"temperature": "0.5", "max_tokens": 8, "stop": "1"})))
    assert g.request.text == PROMPT and g.request.model == MODEL and g.request.request_id == "r-1"
    assert g.request.sampling == {"temperature": 0.5, "max_tokens": 8, "stop": "1"} and g.request.api == "oip"
    assert not g.stream and g.echo == PROMPT and g.outputs == {"text_output"}
    streamed = oip_generate.parse(_request(_inputs(stream=True, return_finish_reason=True)))
    assert streamed.stream and streamed.echo == "" and streamed.outputs == {"text_output", "finish_reason"}
    by_params = oip_generate.parse(_request(_inputs(exclude=True), parameters={"max_tokens": 3, "seed": 7}))
    assert by_params.request.sampling == {"max_tokens": 3, "seed": 7} and by_params.echo == ""
    prompt = oip_generate.parse(_request(_inputs(None, prompt_name="support", prompt_alias="production",
                                                 prompt_variables='{"question": "hi"}')))
    ref = prompt.request.prompt
    assert prompt.request.text is None and ref is not None
    assert (ref.name, ref.alias, ref.variables) == ("support", "production", {"question": "hi"})
    numbered = oip_generate.parse(_request(_inputs(None, prompt_name="s", prompt_version="3"))).request.prompt
    assert numbered is not None and numbered.version == 3


@pytest.mark.parametrize(("inputs", "message"), [
    (_inputs(None), "text_input"),
    (_inputs(""), "empty"),
    (_inputs(sampling="{not json"), "not JSON"),
    (_inputs(sampling="3"), "JSON object"),
    (_inputs(stream=True, exclude=False), "streaming"),
    (_inputs(prompt_name="p"), "not both"),
    (_inputs(None, prompt_version="2"), "needs prompt_name"),
    (_inputs(None, prompt_name="p", prompt_version="two"), "version number"),
    (_inputs(None, prompt_name="p", prompt_version="2", prompt_alias="production"), "not both"),
    (_inputs(None, prompt_name="p", prompt_variables='{"a": 1}'), "strings"),
    (_inputs(other="x"), "unknown input"),
    ([_bytes("stream", "yes"), _bytes("text_input", "hi")], "must be BOOL"),
    ([_bytes("text_input", b"\xff\xfe")], "UTF-8"),
])
def test_bad_requests_are_refused_with_the_reason(inputs: list[tg.InferInput], message: str) -> None:
    with pytest.raises(LooplineError, match=message) as info:
        oip_generate.parse(_request(inputs))
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT


def test_an_unknown_output_is_refused() -> None:
    with pytest.raises(LooplineError, match="unknown output"):
        oip_generate.parse(_request(_inputs(), outputs=["logits"]))


class _Pieces:
    """A stand-in for the generate use case (the translation's own logic; the real one is tested below)."""

    def __init__(self, pieces: list[Piece]) -> None:
        self.pieces = pieces
        self.closed = False

    def served(self) -> list[tuple[str, int]]:
        return [(MODEL, 4)]

    async def stream(self, req: Any) -> AsyncIterator[Piece]:
        try:
            for p in self.pieces:
                yield p
        finally:
            self.closed = True


async def _responses(pieces: list[Piece]) -> list[tg.InferResult]:
    req = _request(_inputs(stream=True, return_finish_reason=True, return_num_output_tokens=True))
    g = oip_generate.parse(req)
    return [tg.InferResult(r) async for r in oip_generate.stream(_Pieces(pieces), req, g)]  # type: ignore[arg-type]


async def test_a_stream_flags_its_last_response_final() -> None:
    # as vLLM's stream comes through the use case: text pieces, the rest with the finish reason, then usage
    out = await _responses([Piece("Sorry "), Piece("about "), Piece("that.", "stop"), Piece("", None, 9, 3)])
    assert [_text(r) for r in out] == ["Sorry ", "about ", "that.", ""]
    assert [_final(r) for r in out] == [False, False, False, True]
    assert out[-1].as_numpy("finish_reason")[0] == b"stop" and int(out[-1].as_numpy("num_output_tokens")[0]) == 3
    assert out[0].as_numpy("finish_reason") is None and out[0].get_response().model_version == "4"
    # a last piece with both: one final response carries the text and the figures
    out = await _responses([Piece("Hi "), Piece("there", "length", 9, 2)])
    assert [(_text(r), _final(r)) for r in out] == [("Hi ", False), ("there", True)]
    assert int(out[-1].as_numpy("num_output_tokens")[0]) == 2


async def test_closing_a_response_stream_closes_the_generation() -> None:
    pieces = _Pieces([Piece("a "), Piece("b "), Piece("c", "stop")])
    req = _request(_inputs(stream=True))
    responses = oip_generate.stream(pieces, req, oip_generate.parse(req))  # type: ignore[arg-type]
    await anext(responses)
    await responses.aclose()
    assert pieces.closed


# ---- through the server --------------------------------------------------------------------------------


async def test_metadata_config_and_the_fraud_model_beside(served: Served) -> None:
    client = grpcx.with_auth(tg.InferenceServerClient(served.addr))
    meta = client.get_model_metadata(MODEL)
    assert meta.platform == "vllm" and meta.versions == ["1"]
    inputs = {t.name: t.datatype for t in meta.inputs}
    assert inputs["text_input"] == "BYTES" and inputs["stream"] == "BOOL" and inputs["sampling_parameters"] == "BYTES"
    assert inputs["exclude_input_in_output"] == "BOOL" and inputs["prompt_name"] == "BYTES"
    assert {t.name: t.datatype for t in meta.outputs}["text_output"] == "BYTES"
    cfg = client.get_model_config(MODEL).config
    assert cfg.model_transaction_policy.decoupled and cfg.backend == "vllm" and cfg.max_batch_size == 0
    stats = client.get_inference_statistics(MODEL).model_stats
    assert [(m.name, m.version) for m in stats] == [(MODEL, "1")]
    index = {(m.name, m.state) for m in client.get_model_repository_index().models}
    assert (MODEL, "READY") in index and ("fraud", "READY") in index

    # the fraud model still answers, next to the LLM
    x = np.random.default_rng(0).normal(size=(3, len(FEATURES))).astype(np.float32)
    inp = tg.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("fraud", [inp])
    np.testing.assert_allclose(out.as_numpy("score"), make_model(1).predict(x), rtol=1e-5)


async def test_model_infer_answers_the_whole_text(served: Served) -> None:
    client = grpcx.with_auth(tg.InferenceServerClient(served.addr))
    echoed = client.infer(MODEL, _inputs(sampling=GREEDY), request_id="whole-1")
    answer = client.infer(MODEL, _inputs(sampling=GREEDY, exclude=True, return_finish_reason=True,
                                         return_num_input_tokens=True, return_num_output_tokens=True))
    text = _text(answer)
    assert text.strip(), "the tiny Llama answers something"
    # the vLLM backend's default: a non-streamed answer repeats its input first
    assert _text(echoed) == PROMPT + text and echoed.get_response().id == "whole-1"
    assert echoed.get_response().model_version == "1"
    assert answer.as_numpy("finish_reason")[0].decode() in ("stop", "length")
    assert int(answer.as_numpy("num_input_tokens")[0]) > 0
    assert 0 < int(answer.as_numpy("num_output_tokens")[0]) <= GREEDY["max_tokens"]
    assert answer.as_numpy("finish_reason") is not None and echoed.as_numpy("finish_reason") is None
    # the same greedy request answers the same text
    assert _text(client.infer(MODEL, _inputs(sampling=GREEDY, exclude=True))) == text


async def test_stream_pieces_arrive_one_by_one_and_add_up(served: Served) -> None:
    client = grpcx.with_auth(tg.InferenceServerClient(served.addr))
    whole = _text(client.infer(MODEL, _inputs(sampling=GREEDY, exclude=True)))
    s = Stream(served.addr)
    try:
        s.send(_inputs(stream=True, sampling=GREEDY, return_finish_reason=True, return_num_output_tokens=True),
               "stream-1")
        responses = []
        for result, error in await asyncio.to_thread(lambda: list(s.until_final())):
            assert error is None, error
            assert result is not None
            responses.append(result)
    finally:
        s.close()
    pieces = [_text(r) for r in responses]
    assert len([p for p in pieces if p]) > 1, f"one response per piece, got {pieces}"
    assert "".join(pieces) == whole
    assert [_final(r) for r in responses] == [False] * (len(responses) - 1) + [True]
    assert all(r.get_response().id == "stream-1" for r in responses)
    last = responses[-1]
    assert last.as_numpy("finish_reason")[0].decode() in ("stop", "length")
    assert 0 < int(last.as_numpy("num_output_tokens")[0]) <= GREEDY["max_tokens"]


async def test_sampling_parameters_are_honoured(served: Served) -> None:
    client = grpcx.with_auth(tg.InferenceServerClient(served.addr))
    long = _text(client.infer(MODEL, _inputs(sampling={"temperature": 0, "max_tokens": 32}, exclude=True)))
    # the vLLM backend's clients send values as strings: they are taken as numbers, as there
    short = client.infer(MODEL, _inputs(sampling={"temperature": "0", "max_tokens": "3", "ignore_eos": "true"},
                                        exclude=True, return_num_output_tokens=True, return_finish_reason=True))
    assert int(short.as_numpy("num_output_tokens")[0]) == 3
    assert short.as_numpy("finish_reason")[0].decode() == "length"
    assert long.startswith(_text(short)) and len(_text(short)) < len(long)
    # without the sampling_parameters input, the request's parameters are the sampling parameters (as there)
    by_params = client.infer(MODEL, _inputs(exclude=True, return_num_output_tokens=True),
                             parameters={"temperature": 0.0, "max_tokens": 2, "ignore_eos": True})
    assert int(by_params.as_numpy("num_output_tokens")[0]) == 2


async def test_bad_requests_are_invalid_argument(served: Served) -> None:
    client = grpcx.with_auth(tg.InferenceServerClient(served.addr))
    cases = {
        "missing text_input": _inputs(None, sampling=GREEDY),
        "empty text_input": _inputs("  "),
        "oversized prompt": _inputs("card " * 20_000),
        "sampling not JSON": _inputs(sampling="{temperature: 0"),
        "sampling not an object": _inputs(sampling="[1, 2]"),
        "negative temperature": _inputs(sampling={"temperature": -1}),
        "max_tokens 0": _inputs(sampling={"max_tokens": 0}),
        "unknown sampling key": _inputs(sampling={"temprature": 0.5}),
        "unknown prompt version": _inputs(None, prompt_name="no-such-prompt", prompt_version="7"),
        "unknown input": _inputs(foo="bar"),
        "stream on ModelInfer": _inputs(stream=True),
        "echo while streaming": _inputs(stream=True, exclude=False),
    }
    messages = {name: _invalid(lambda inputs=inputs: client.infer(MODEL, inputs)) for name, inputs in cases.items()}
    assert "text_input" in messages["missing text_input"] and "empty" in messages["empty text_input"]
    assert "temperature" in messages["negative temperature"] and "max_tokens" in messages["max_tokens 0"]
    assert "temprature" in messages["unknown sampling key"]
    assert "unknown prompt version" in messages["unknown prompt version"]
    with pytest.raises(InferenceServerException) as info:
        client.infer("no-such-llm", _inputs())
    assert info.value.status() == "StatusCode.NOT_FOUND"

    # on a stream a bad request is an error response, and the stream goes on
    s = Stream(served.addr)
    try:
        s.send(_inputs(stream=True, sampling={"temperature": -1}), "bad-1")
        s.send(_inputs(stream=True, sampling=GREEDY), "good-1")

        def collect() -> tuple[list[Any], str]:
            errors, text = [], ""
            while True:
                result, error = s.q.get(timeout=120)
                if error is not None:
                    errors.append(error)
                    continue
                assert result is not None
                text += _text(result)
                if _final(result):
                    return errors, text
        errors, text = await asyncio.to_thread(collect)
        errors += [e for _, e in list(s.q.queue)]
        assert len(errors) == 1 and "INVALID_ARGUMENT" in str(errors[0]) and "temperature" in str(errors[0])
        assert text == _text(client.infer(MODEL, _inputs(sampling=GREEDY, exclude=True)))
    finally:
        s.close()
    assert client.is_model_ready(MODEL) and client.is_model_ready("fraud")


def _engine_url(served: Served) -> str:
    """The engine's address, from inference's log (a test reads the engine's own metrics beside it)."""
    for line in served.svc.running["inference"].log.read_text().splitlines():
        if line.startswith("{") and '"serving new LLM version"' in line:
            return str(json.loads(line)["engine_url"])
    raise AssertionError("inference logged no engine")


async def _engine_metric(url: str, name: str, **labels: str) -> float:
    """The sum of an engine metric's samples whose labels include ``labels``."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _generation(served: Served, request_id: str) -> Generation:
    topic = served.namer.generations(MODEL)
    async with asyncio.timeout(60):
        while True:
            records = await read_fenced(served.env["LOOPLINE_KAFKA_BOOTSTRAP"], topic)
            found = [g for g in (Generation.FromString(r.value) for r in records) if g.request_id == request_id]
            if found:
                return found[0]
            await asyncio.sleep(0.5)


async def test_a_cancelled_stream_cancels_its_generation(served: Served) -> None:
    url = _engine_url(served)
    client = grpcx.with_auth(tg.InferenceServerClient(served.addr))
    client.infer(MODEL, _inputs(sampling={"max_tokens": 2, "ignore_eos": True}))
    assert await _engine_metric(url, "vllm:request_success_total", finished_reason="length") >= 1, \
        "the engine counts the requests that ran to max_tokens"
    sampling = {"temperature": 0, "max_tokens": 400, "ignore_eos": True}  # ~1.4 s of generation here
    for _ in range(3):
        finished = await _engine_metric(url, "vllm:request_success_total", finished_reason="length")
        request_id = f"cancel-{uuid.uuid4().hex[:8]}"
        s = Stream(served.addr)
        try:
            s.send(_inputs(stream=True, sampling=sampling), request_id)
            first, error = await asyncio.to_thread(s.q.get, True, 120)
            assert error is None and first is not None and not _final(first)
        finally:
            s.close(cancel=True)
        g = await _generation(served, request_id)
        if g.completion_tokens < sampling["max_tokens"]:
            break
        # every token was made before the cancel landed (on a busy machine this process may wait its turn
        # for longer than the ~1.4 s the engine needs): again
    assert g.outcome == "cancelled" and g.finish_reason == "abort" and g.api == "oip", g
    # the engine let the request go: nothing runs, and it did not run to its max_tokens
    async with asyncio.timeout(30):
        while await _engine_metric(url, "vllm:num_requests_running") > 0:
            await asyncio.sleep(0.2)
    assert await _engine_metric(url, "vllm:request_success_total", finished_reason="length") == finished


async def test_a_passed_deadline_cancels_its_generation(served: Served) -> None:
    client = grpcx.with_auth(tg.InferenceServerClient(served.addr))
    request_id = f"deadline-{uuid.uuid4().hex[:8]}"
    with pytest.raises(InferenceServerException) as info:  # 400 tokens take ~1.4 s here
        client.infer(MODEL, _inputs(sampling={"temperature": 0, "max_tokens": 400, "ignore_eos": True}),
                     request_id=request_id, client_timeout=0.3)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    g = await _generation(served, request_id)
    assert g.outcome == "cancelled" and g.finish_reason == "abort", g


async def test_a_registry_prompt_by_version(served: Served) -> None:
    async with grpcx.channel(served.svc.addr("registry")) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        created = (await stub.CreatePromptVersion(registry_pb2.CreatePromptVersionRequest(
            prompt=registry_pb2.PromptVersion(name=f"support-{uuid.uuid4().hex[:6]}", model_name=MODEL,
                                              template="Customer: {{question}}\nAgent:",
                                              sampling_parameters=json.dumps(GREEDY))))).prompt
    client = grpcx.with_auth(tg.InferenceServerClient(served.addr))
    by_prompt = client.infer(MODEL, _inputs(None, prompt_name=created.name, prompt_version=str(created.version),
                                            prompt_variables=json.dumps({"question": "my card was charged twice "
                                                                                     "for one order"})))
    raw = client.infer(MODEL, _inputs(sampling=GREEDY, exclude=True))
    # the rendered prompt is the raw one, with the prompt's default sampling: the same greedy answer
    assert _text(by_prompt) == _text(raw)
    missing = _invalid(lambda: client.infer(MODEL, _inputs(None, prompt_name=created.name,
                                                           prompt_version=str(created.version))))
    assert "question" in missing
