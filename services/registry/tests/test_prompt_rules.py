"""The registry's prompt rules as pure functions (no stack)."""

from __future__ import annotations

import pytest
from loopline_core.errors import ErrorKind, LooplineError
from loopline_ml import prompt as prompts
from loopline_registry.domain.prompts import MAX_TEMPLATE_CHARS, check_prompt_alias, check_prompt_name, new_version


def _new(template: str = "Hi {{name}}, {{ topic }}", variables: list[str] | None = None,
         sampling: str = "", model: str = "tiny-llama", model_version: int = 0):  # type: ignore[no-untyped-def]
    return new_version("greet", template, variables or [], model, model_version, sampling, "", "alice")


def _invalid(fn, *words: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LooplineError) as err:
        fn()
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT
    for w in words:
        assert w in err.value.message


def test_variables_are_derived_and_a_listed_set_must_match() -> None:
    p = _new()
    assert p.variables == ["name", "topic"] and p.sampling_parameters == "{}"
    assert p.digest == prompts.digest(p.template, "tiny-llama", 0, "{}")
    assert _new(variables=["topic", "name", "name"]).variables == ["name", "topic"]
    _invalid(lambda: _new(variables=["name", "nmae"]), "not in the template: nmae", "not listed: topic")


def test_sampling_is_canonical_and_finite() -> None:
    assert _new(sampling='{"top_p": 0.9, "temperature": 0}').sampling_parameters == '{"temperature":0,"top_p":0.9}'
    spaced = _new(sampling='{ "temperature":0, "top_p":0.9 }')
    assert _new(sampling='{"top_p":0.9,"temperature":0}').digest == spaced.digest
    _invalid(lambda: _new(sampling='{"temperature": Infinity}'), "finite")
    _invalid(lambda: _new(sampling='"hot"'), "JSON object")
    _invalid(lambda: _new(sampling="{"), "not JSON")


def test_templates_names_and_aliases() -> None:
    _invalid(lambda: _new("Hi {{name}"), "unbalanced")
    _invalid(lambda: _new("x" * (MAX_TEMPLATE_CHARS + 1)), "at most")
    _invalid(lambda: _new(model=""), "model")
    _invalid(lambda: _new(model_version=-1), "model_version")
    _invalid(lambda: check_prompt_name("Greet"), "prompt name")
    _invalid(lambda: check_prompt_alias("latest"), "reserved")
    _invalid(lambda: check_prompt_alias("Prod"), "prompt alias")
    assert check_prompt_alias("production") == "production" and check_prompt_alias("ab-test_2") == "ab-test_2"
    assert _new(model_version=3).digest != _new().digest, "the binding is part of the content"
