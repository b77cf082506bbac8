"""Sampling parameters are checked before they reach an engine. Pure, no stack."""

from __future__ import annotations

import pytest
from loopline_ml.sampling import SamplingError, merge, validate


def test_valid_parameters_are_normalised() -> None:
    assert validate({"temperature": 0, "top_p": 1, "top_k": -1, "max_tokens": 5, "stop": "\n", "seed": 3,
                     "ignore_eos": True, "presence_penalty": None}) == {
        "temperature": 0.0, "top_p": 1.0, "top_k": -1, "max_tokens": 5, "stop": ["\n"], "seed": 3, "ignore_eos": True}


@pytest.mark.parametrize(("params", "message"), [
    ({"temperature": -1}, "'temperature' must be in"),
    ({"temperature": "hot"}, "'temperature' must be a finite number"),
    ({"temperature": float("nan")}, "finite"),
    ({"top_p": 0}, "'top_p'"),
    ({"top_k": 0}, "'top_k'"),
    ({"max_tokens": 0}, "'max_tokens'"),
    ({"max_tokens": 2.5}, "'max_tokens' must be an integer"),
    ({"max_tokens": True}, "'max_tokens' must be an integer"),
    ({"min_tokens": 9, "max_tokens": 4}, "must not exceed"),
    ({"stop": ["", "x"]}, "'stop'"),
    ({"stop": ["s"] * 9}, "at most 8"),
    ({"seed": -1}, "'seed'"),
    ({"ignore_eos": 1}, "true or false"),
    ({"foo": 1}, "unknown sampling parameter 'foo'"),
])
def test_invalid_parameters_are_refused_by_name(params: dict[str, object], message: str) -> None:
    with pytest.raises(SamplingError, match=message):
        validate(params)


def test_a_request_overrides_a_prompts_defaults() -> None:
    assert merge({"temperature": 0.2, "max_tokens": 8}, {"max_tokens": 4, "top_p": None}) == {
        "temperature": 0.2, "max_tokens": 4}
