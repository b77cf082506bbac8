"""Entity requests as an outsider would send them: Triton's own BYTES encoding, and broken ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
from loopline_core.errors import LooplineError
from loopline_inference.domain.entities import BytesTensor, entity_request
from tritonclient.utils import serialize_byte_tensor


def _raw(values: list[bytes]) -> bytes:
    return bytes(serialize_byte_tensor(np.array(values, dtype=np.object_)).item())


def _t(name: str, values: list[bytes], *, raw: bool = True, shape: tuple[int, ...] | None = None) -> BytesTensor:
    return BytesTensor(name, "BYTES", shape or (len(values),), _raw(values) if raw else None,
                       [] if raw else values)


def test_reads_tritons_raw_and_typed_bytes() -> None:
    rows = [json.dumps({"amount": 12.5, "merchant_category": "fuel"}).encode(), b"{}"]
    for raw in (True, False):
        req = entity_request([_t("entity_ids", [b"c1", "ç2".encode()], raw=raw), _t("request", rows, raw=raw)])
        assert req.entity_ids == ["c1", "ç2"]
        assert req.numbers == [{"amount": 12.5}, {}]
        assert req.strings == [{"merchant_category": "fuel"}, {}]
    only = entity_request([_t("entity_ids", [b"c1"], shape=(1, 1))])
    assert only.entity_ids == ["c1"] and only.numbers == [{}]


@pytest.mark.parametrize(("tensors", "why"), [
    ([_t("entity_ids", [b"c1"]), _t("features", [b"x"])], "entity request takes"),
    ([_t("request", [b"{}"])], "entity request takes"),
    ([_t("entity_ids", [b""])], "1..256 bytes"),
    ([_t("entity_ids", [b"x" * 300])], "1..256 bytes"),
    ([_t("entity_ids", [b"\xff"])], "not UTF-8"),
    ([_t("entity_ids", [b"c1", b"c2"]), _t("request", [b"{}"])], "1 rows for 2 entities"),
    ([_t("entity_ids", [b"c1"]), _t("request", [b"[1]"])], "JSON object"),
    ([_t("entity_ids", [b"c1"]), _t("request", [b"{"])], "not JSON"),
    ([_t("entity_ids", [b"c1"]), _t("request", [b'{"a": NaN}'])], "finite"),
    ([_t("entity_ids", [b"c1"]), _t("request", [b'{"a": true}'])], "number or a string"),
    ([_t("entity_ids", [b"c1"]), _t("request", [b'{"a": [1]}'])], "number or a string"),
    ([BytesTensor("entity_ids", "BYTES", (2,), _raw([b"c1"]), [])], "ends after 1 of 2"),
    ([BytesTensor("entity_ids", "BYTES", (1,), _raw([b"c1"]) + b"zz", [])], "left over"),
    ([BytesTensor("entity_ids", "BYTES", (1,), b"\xff\xff\x00\x00c1", [])], "claims 65535 bytes"),
    ([BytesTensor("entity_ids", "FP32", (1,), b"\x00" * 4, [])], "must be BYTES"),
    ([BytesTensor("entity_ids", "BYTES", (1, 2), _raw([b"a", b"b"]), [])], "shape"),
    ([BytesTensor("entity_ids", "BYTES", (2,), None, [b"a"])], "holds 1 elements"),
])
def test_refuses_broken_requests_with_the_reason(tensors: list[BytesTensor], why: str) -> None:
    with pytest.raises(LooplineError, match=why) as err:
        entity_request(tensors)
    assert err.value.kind.value == "INVALID_ARGUMENT"
