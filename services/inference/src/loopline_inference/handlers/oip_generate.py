"""LLM generate over the Open Inference Protocol, the way Triton's vLLM backend takes it.

Inputs (all ``dims [1]``): ``text_input`` (BYTES, the raw prompt), ``stream`` (BOOL), ``sampling_parameters``
(BYTES, a JSON object of vLLM's names; as in the vLLM backend, when it is absent the request's own
parameters are the sampling parameters), ``exclude_input_in_output`` (BOOL) and ``return_finish_reason``,
``return_num_input_tokens``, ``return_num_output_tokens`` (BOOL). Output ``text_output`` (BYTES), and
``finish_reason`` / ``num_input_tokens`` / ``num_output_tokens`` when asked for.

Loopline's extensions are optional BYTES inputs too, not request parameters (tensors reach a model
through ensembles and BLS, parameters do not, which is why the vLLM backend takes ``sampling_parameters``
as a tensor): ``prompt_name`` names a registry prompt instead of ``text_input``, ``prompt_version`` (its
number, BYTES or INT32/INT64) or ``prompt_alias`` picks the version (neither: the registry's latest),
``prompt_variables`` (a JSON object of strings) fills its template.

Streaming is ``ModelStreamInfer`` with ``stream`` true: one response per piece of text, the last one
carrying ``triton_final_response`` true (every streamed response carries the flag, as Triton's gRPC
frontend sets it for decoupled models). A model with a decoupled transaction policy cannot be called
with ``ModelInfer`` in Triton; here ``ModelInfer`` answers the whole text, since nothing is lost by it.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from loopline_core.errors import invalid, not_found
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from loopline_inference.domain.entities import split_raw_bytes
from loopline_inference.handlers.generate import GenerateRequest, Generator, Piece, PromptRef

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
FINAL = "triton_final_response"
BACKEND = "vllm"

_BYTES = {"text_input", "sampling_parameters", "prompt_name", "prompt_alias", "prompt_variables"}
_BOOLS = {"stream", "exclude_input_in_output", "return_finish_reason", "return_num_input_tokens",
          "return_num_output_tokens"}
_INPUTS: list[tuple[str, int]] = [
    (TEXT_INPUT, mc.TYPE_STRING), ("stream", mc.TYPE_BOOL), ("sampling_parameters", mc.TYPE_STRING),
    ("exclude_input_in_output", mc.TYPE_BOOL), ("return_finish_reason", mc.TYPE_BOOL),
    ("return_num_input_tokens", mc.TYPE_BOOL), ("return_num_output_tokens", mc.TYPE_BOOL),
    ("prompt_name", mc.TYPE_STRING), ("prompt_version", mc.TYPE_STRING), ("prompt_alias", mc.TYPE_STRING),
    ("prompt_variables", mc.TYPE_STRING)]
_OUTPUTS: list[tuple[str, int, list[int]]] = [
    (TEXT_OUTPUT, mc.TYPE_STRING, [-1]), ("finish_reason", mc.TYPE_STRING, [-1]),
    ("num_input_tokens", mc.TYPE_UINT32, [1]), ("num_output_tokens", mc.TYPE_UINT32, [-1])]
_RETURNS = {"finish_reason": "return_finish_reason", "num_input_tokens": "return_num_input_tokens",
            "num_output_tokens": "return_num_output_tokens"}
# Request parameters that belong to the protocol or to tritonclient, never sampling parameters.
_RESERVED = {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output",
             "headers"}
_TYPES = {mc.TYPE_STRING: "BYTES", mc.TYPE_BOOL: "BOOL", mc.TYPE_UINT32: "UINT32"}


@dataclass(frozen=True)
class OipGenerate:
    """One generate request read off the wire."""

    request: GenerateRequest
    stream: bool
    echo: str
    """Text put before the answer (the input, when ``exclude_input_in_output`` is false)."""
    outputs: frozenset[str]


# ---- reading a request -------------------------------------------------------------------------------


_WIDTHS = {"BOOL": 1, "INT32": 4, "INT64": 8}


def _one(t: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> bytes | bool | int:
    """The single element of a [1]-shaped input, from its raw bytes or its typed contents."""
    count = 1
    for d in t.shape:
        count *= d
    if count != 1:
        raise invalid(f"input {t.name!r} must hold one element (shape [1]), got shape {list(t.shape)}")
    if t.datatype == "BYTES":
        if raw is not None:
            return split_raw_bytes(raw, 1, t.name)[0]
        return bytes(_single(t, list(t.contents.bytes_contents)))
    width = _WIDTHS[t.datatype]
    if raw is not None:
        if len(raw) != width:
            raise invalid(f"input {t.name!r}: raw {t.datatype} holds {len(raw)} bytes, expected {width}")
        return raw != b"\x00" if t.datatype == "BOOL" else int.from_bytes(raw, "little", signed=True)
    if t.datatype == "BOOL":
        return bool(_single(t, list(t.contents.bool_contents)))
    return int(_single(t, list(t.contents.int_contents if width == 4 else t.contents.int64_contents)))


def _single(t: pb.ModelInferRequest.InferInputTensor, values: list[Any]) -> Any:
    if len(values) != 1:
        raise invalid(f"input {t.name!r} holds {len(values)} elements, expected 1")
    return values[0]


def _inputs(req: pb.ModelInferRequest) -> dict[str, bytes | bool | int]:
    raws = list(req.raw_input_contents)
    if raws and len(raws) != len(req.inputs):
        raise invalid("raw_input_contents must match inputs one to one")
    out: dict[str, bytes | bool | int] = {}
    for i, t in enumerate(req.inputs):
        if t.name in out:
            raise invalid(f"input {t.name!r} is given twice")
        want = ("BYTES",) if t.name in _BYTES else ("BOOL",) if t.name in _BOOLS else (
            ("BYTES", "INT32", "INT64") if t.name == "prompt_version" else ())
        if not want:
            raise invalid(f"unknown input {t.name!r}; the model takes {', '.join(n for n, _ in _INPUTS)}")
        if t.datatype not in want:
            raise invalid(f"input {t.name!r} must be {' or '.join(want)}, got {t.datatype}")
        out[t.name] = _one(t, raws[i] if raws else None)
    return out


def _text(inputs: dict[str, bytes | bool | int], name: str) -> str | None:
    value = inputs.get(name)
    if value is None:
        return None
    assert isinstance(value, bytes)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"input {name!r} is not UTF-8 text") from e


def _json_object(text: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise invalid(f"input {name!r} is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise invalid(f"input {name!r} must be a JSON object, got {type(value).__name__}")
    return value


def _loosen(sampling: dict[str, Any]) -> dict[str, Any]:
    # Triton's vLLM backend casts string values to the parameter's type, and its own sample client sends
    # {"temperature": "0.1"}: take numbers and flags written as strings (never ``stop``, which is text).
    out: dict[str, Any] = {}
    for k, v in sampling.items():
        out[k] = v
        if isinstance(v, str) and k != "stop":
            with contextlib.suppress(ValueError):
                parsed = json.loads(v)
                if isinstance(parsed, int | float | bool):
                    out[k] = parsed
    return out


def _parameter_sampling(req: pb.ModelInferRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, p in req.parameters.items():
        if k in _RESERVED or k.startswith("triton_"):
            continue
        kind = p.WhichOneof("parameter_choice")
        out[k] = getattr(p, kind) if kind else None
    return out


def _prompt(inputs: dict[str, bytes | bool | int]) -> PromptRef | None:
    name = _text(inputs, "prompt_name")
    extras = [n for n in ("prompt_version", "prompt_alias", "prompt_variables") if n in inputs]
    if name is None:
        if extras:
            raise invalid(f"{extras[0]} needs prompt_name")
        return None
    if not name:
        raise invalid("input 'prompt_name' is empty")
    raw_version = inputs.get("prompt_version", 0)
    if isinstance(raw_version, bytes):
        try:
            raw_version = int(raw_version.decode("ascii") or "0")
        except ValueError as e:
            raise invalid("input 'prompt_version' must be a version number") from e
    if isinstance(raw_version, bool) or not isinstance(raw_version, int) or raw_version < 0:
        raise invalid("input 'prompt_version' must be a non-negative version number")
    alias = _text(inputs, "prompt_alias") or ""
    if raw_version and alias:
        raise invalid("give prompt_version or prompt_alias, not both")
    variables_text = _text(inputs, "prompt_variables")
    variables = _json_object(variables_text, "prompt_variables") if variables_text is not None else {}
    if not all(isinstance(v, str) for v in variables.values()):
        raise invalid("input 'prompt_variables' must map names to strings")
    return PromptRef(name=name, version=raw_version, alias=alias, variables=variables)


def parse(req: pb.ModelInferRequest, *, client: str = "") -> OipGenerate:
    """Read a generate request, or INVALID_ARGUMENT naming what is wrong with it.

    What only the model knows (a prompt too long for it, a prompt version the registry lacks, the
    sampling parameters' ranges) is checked by the generate use case.
    """
    inputs = _inputs(req)
    prompt = _prompt(inputs)
    text = _text(inputs, TEXT_INPUT)
    if prompt is None and text is None:
        raise invalid(f"input {TEXT_INPUT!r} is missing (or name a registry prompt with prompt_name)")
    if prompt is not None and text is not None:
        raise invalid(f"give {TEXT_INPUT!r} or prompt_name, not both")
    if text is not None and not text.strip():
        raise invalid(f"input {TEXT_INPUT!r} is empty")
    stream = bool(inputs.get("stream", False))
    # The vLLM backend's rule: the input is echoed unless excluded, and by default only when not streaming.
    echo_flag = inputs.get("exclude_input_in_output")
    echo = (not echo_flag) if echo_flag is not None else not stream
    if echo and stream:
        raise invalid("when streaming, exclude_input_in_output = false is not allowed")
    if echo and prompt is not None and echo_flag is not None:
        raise invalid("a registry prompt's rendered text is not echoed: leave exclude_input_in_output out")
    sampling_text = _text(inputs, "sampling_parameters")
    sampling = (_json_object(sampling_text, "sampling_parameters") if sampling_text is not None
                else _parameter_sampling(req))
    outputs = _requested_outputs(req, inputs)
    request = GenerateRequest(model=req.model_name, text=text, prompt=prompt, sampling=_loosen(sampling),
                              api="oip", client=client, request_id=req.id)
    return OipGenerate(request=request, stream=stream, echo=text if echo and text is not None else "",
                       outputs=outputs)


def _requested_outputs(req: pb.ModelInferRequest, inputs: dict[str, bytes | bool | int]) -> frozenset[str]:
    asked = {name for name, flag in _RETURNS.items() if inputs.get(flag)}
    known = {name for name, _, _ in _OUTPUTS}
    if not req.outputs:
        return frozenset({TEXT_OUTPUT} | asked)
    named = set()
    for o in req.outputs:
        if o.name not in known:
            raise invalid(f"unknown output {o.name!r}; the model gives {', '.join(sorted(known))}")
        named.add(o.name)
    # As Triton: the outputs named are the ones returned (an extra one still needs its return_* flag).
    return frozenset(n for n in named if n == TEXT_OUTPUT or n in asked)


# ---- writing responses -------------------------------------------------------------------------------


def _bytes(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def response(req: pb.ModelInferRequest, version: int, text: str, last: Piece | None,
             outputs: frozenset[str], *, final: bool | None = None) -> pb.ModelInferResponse:
    """A response holding ``text`` (and, on the last one, the finish reason and token counts asked for).

    ``final`` None leaves ``triton_final_response`` out (a ModelInfer answer, which Triton does not flag).
    """
    tensors: list[tuple[str, str, bytes]] = []
    if TEXT_OUTPUT in outputs:
        tensors.append((TEXT_OUTPUT, "BYTES", _bytes(text.encode("utf-8"))))
    if last is not None:
        if "finish_reason" in outputs and last.finish_reason is not None:
            tensors.append(("finish_reason", "BYTES", _bytes(last.finish_reason.encode("utf-8"))))
        if "num_input_tokens" in outputs and last.prompt_tokens is not None:
            tensors.append(("num_input_tokens", "UINT32", struct.pack("<I", last.prompt_tokens)))
        if "num_output_tokens" in outputs and last.completion_tokens is not None:
            tensors.append(("num_output_tokens", "UINT32", struct.pack("<I", last.completion_tokens)))
    params = {} if final is None else {FINAL: pb.InferParameter(bool_param=final)}
    return pb.ModelInferResponse(
        model_name=req.model_name, model_version=str(version) if version else "", id=req.id, parameters=params,
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=n, datatype=d, shape=[1]) for n, d, _ in tensors],
        raw_output_contents=[raw for _, _, raw in tensors])


def error_response(req: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """A failed request on a stream: its error, flagged final (the stream itself goes on)."""
    return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(
        model_name=req.model_name, id=req.id, parameters={FINAL: pb.InferParameter(bool_param=True)}))


def version_of(generator: Generator, model: str, pinned: str = "") -> int:
    """The version serving ``model`` (0 when not ready: the use case then says UNAVAILABLE or NOT_FOUND)."""
    version = dict(generator.served()).get(model, 0)
    if pinned and version and pinned != str(version):
        raise not_found(f"model {model!r} version {pinned} is not loaded (serving {version})")
    return version


async def infer(generator: Generator, req: pb.ModelInferRequest, g: OipGenerate, *,
                final: bool | None = None) -> pb.ModelInferResponse:
    """The whole answer in one response (``ModelInfer``, or ``ModelStreamInfer`` without ``stream``:
    then ``final`` True, as a decoupled model's only response)."""
    version = version_of(generator, req.model_name, req.model_version)
    text, last = await generator.generate(g.request)
    return response(req, version, g.echo + text, last, g.outputs, final=final)


async def stream(generator: Generator, req: pb.ModelInferRequest, g: OipGenerate
                 ) -> AsyncGenerator[pb.ModelInferResponse, None]:
    """One response per piece of text as the engine makes it, the last one flagged final.

    A piece that carries the finish reason or the token counts (vLLM sends the usage after the last
    text) is held back and merged, so the final response carries them; text is never held back.
    Closing this iterator (the caller cancelled, its deadline passed) closes the generate stream, and
    with it the engine's request.
    """
    version = version_of(generator, req.model_name, req.model_version)
    held: Piece | None = None
    async with _closing(generator.stream(g.request)) as pieces:
        async for p in pieces:
            closing = p.finish_reason is not None or p.prompt_tokens is not None or p.completion_tokens is not None
            if not closing:
                if held is not None and held.text:
                    yield response(req, version, held.text, None, g.outputs, final=False)
                    held = Piece("", held.finish_reason, held.prompt_tokens, held.completion_tokens)
                if p.text:
                    yield response(req, version, p.text, None, g.outputs, final=False)
                continue
            if held is not None and held.text:
                yield response(req, version, held.text, None, g.outputs, final=False)
            held = _merge(held, p)
    yield response(req, version, held.text if held else "", held, g.outputs, final=True)


@contextlib.asynccontextmanager
async def _closing(it: AsyncIterator[Piece]) -> AsyncGenerator[AsyncIterator[Piece], None]:
    # aclosing() for any async iterator: a generator is closed at once on the way out (cancelled or not),
    # not whenever the garbage collector gets to it, so the engine's request is aborted at once.
    try:
        yield it
    finally:
        if isinstance(it, AsyncGenerator):
            await it.aclose()


def _merge(old: Piece | None, new: Piece) -> Piece:
    if old is None:
        return new
    return Piece(new.text, new.finish_reason or old.finish_reason,
                 new.prompt_tokens if new.prompt_tokens is not None else old.prompt_tokens,
                 new.completion_tokens if new.completion_tokens is not None else old.completion_tokens)


# ---- describing the model ----------------------------------------------------------------------------


def metadata(model: str, version: int) -> pb.ModelMetadataResponse:
    """ModelMetadata of an LLM: the vLLM backend's tensors and Loopline's prompt inputs."""
    return pb.ModelMetadataResponse(
        name=model, versions=[str(version)], platform=BACKEND,
        inputs=[pb.ModelMetadataResponse.TensorMetadata(name=n, datatype=_TYPES[t], shape=[1]) for n, t in _INPUTS],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(name=n, datatype=_TYPES[t], shape=dims)
                 for n, t, dims in _OUTPUTS])


def config(model: str) -> pb.ModelConfigResponse:
    """ModelConfig of an LLM, as the vLLM backend completes it: decoupled, batching left to the engine.

    ``text_input`` is marked optional because ``prompt_name`` may stand in for it; one of them is required.
    """
    return pb.ModelConfigResponse(config=mc.ModelConfig(
        name=model, backend=BACKEND, max_batch_size=0,
        input=[mc.ModelInput(name=n, data_type=t, dims=[1], optional=True) for n, t in _INPUTS],
        output=[mc.ModelOutput(name=n, data_type=t, dims=dims) for n, t, dims in _OUTPUTS],
        model_transaction_policy=mc.ModelTransactionPolicy(decoupled=True),
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1))))
