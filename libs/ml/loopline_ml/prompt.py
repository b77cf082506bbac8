"""Prompt templates: ``{{name}}`` variables (Mustache style, as MLflow's prompt registry), strict
rendering and a content digest. Pure: the registry validates and digests with it, inference renders.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_BRACES = re.compile(r"\{\{|\}\}")


class PromptError(ValueError):
    """A template or the values given for it are not usable (the caller's error)."""


def variables(template: str) -> list[str]:
    """The variables a template uses, sorted; a stray ``{{`` or ``}}`` is refused."""
    if not template.strip():
        raise PromptError("the template is empty")
    stripped = _VAR.sub("", template)
    if _BRACES.search(stripped):
        raise PromptError("the template has an unbalanced or malformed {{variable}}")
    return sorted(set(_VAR.findall(template)))


def render(template: str, values: Mapping[str, str]) -> str:
    """The template with every variable replaced; missing or unknown variables are refused by name."""
    wanted = set(variables(template))
    missing = sorted(wanted - values.keys())
    unknown = sorted(values.keys() - wanted)
    if missing:
        raise PromptError(f"missing prompt variables: {', '.join(missing)}")
    if unknown:
        raise PromptError(f"unknown prompt variables: {', '.join(unknown)}")
    for name, value in values.items():
        if not isinstance(value, str):
            raise PromptError(f"prompt variable {name!r} must be a string")
    # one pass, so a value containing {{x}} is not expanded again
    return _VAR.sub(lambda m: values[m.group(1)], template)


def canonical_sampling(parameters: str | Mapping[str, object]) -> str:
    """Sampling parameters as canonical JSON (sorted keys, no spaces); must be a JSON object."""
    if isinstance(parameters, str):
        if not parameters.strip():
            return "{}"
        try:
            parameters = json.loads(parameters)
        except json.JSONDecodeError as e:
            raise PromptError(f"sampling parameters are not JSON: {e.msg}") from None
    if not isinstance(parameters, Mapping):
        raise PromptError("sampling parameters must be a JSON object")
    return json.dumps(dict(parameters), sort_keys=True, separators=(",", ":"))


def digest(template: str, model_name: str, model_version: int, sampling_parameters: str) -> str:
    """sha256 of the canonical JSON of what makes a prompt version (the registry dedupes on it)."""
    body = json.dumps({"template": template, "model_name": model_name, "model_version": model_version,
                       "sampling_parameters": json.loads(canonical_sampling(sampling_parameters))},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()
