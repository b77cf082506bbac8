"""Prompt versions: what a stored prompt is and what a new one must satisfy. Pure.

The template is parsed, its variables derived and its content digested with
:mod:`loopline_ml.prompt` (the same functions inference renders with), so the registry never
stores a template that inference could not render.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from loopline_core.errors import invalid
from loopline_ml.prompt import PromptError, canonical_sampling
from loopline_ml.prompt import digest as prompt_digest
from loopline_ml.prompt import variables as template_variables

from loopline_registry.domain.models import check_model_name

_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
# "latest" is what GetPrompt answers without a version or an alias: an alias of that name would shadow it.
_RESERVED = ("latest",)
MAX_TEMPLATE_CHARS = 64 * 1024


@dataclass
class PromptVersion:
    name: str
    version: int
    template: str
    variables: list[str]
    model_name: str
    model_version: int
    sampling_parameters: str
    """Canonical JSON (sorted keys, no spaces): how it is stored and digested."""
    digest: str
    description: str = ""
    author: str = ""
    created_at: float = 0.0
    aliases: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"prompt {self.name} v{self.version}"


@dataclass
class PromptAliasChange:
    name: str
    alias: str
    from_version: int
    to_version: int
    actor: str
    reason: str
    at: float


def check_prompt_name(name: str) -> str:
    """Prompt names follow model names' rule (lowercase, digits, ``_``, ``-``)."""
    if not _ALIAS.match(name):
        raise invalid(f"prompt name must match {_ALIAS.pattern}: {name!r}", field="name")
    return name


def check_prompt_alias(alias: str) -> str:
    """Any lowercase name (production, candidate, ...) except ``latest``."""
    if not _ALIAS.match(alias):
        raise invalid(f"prompt alias must match {_ALIAS.pattern}: {alias!r}", field="alias")
    if alias in _RESERVED:
        raise invalid(f"{alias!r} is reserved: it means the newest version", field="alias")
    return alias


def _check_finite(sampling: str) -> None:
    """Python's json reads NaN and Infinity; no sampler can use them, and they are not JSON."""
    def refuse(token: str) -> None:
        raise invalid(f"sampling parameters must be finite numbers, not {token}", field="sampling_parameters")

    json.loads(sampling, parse_constant=refuse)


def new_version(name: str, template: str, variables: list[str], model_name: str, model_version: int,
                sampling_parameters: str, description: str, author: str) -> PromptVersion:
    """A version to create (number 0: the store assigns it), validated, with its variables and digest.

    The variables are derived from the template; a caller that lists them must list exactly those
    (INVALID_ARGUMENT naming the difference), so a template that lost or gained a variable by a
    typo is caught at creation rather than at the first request.
    """
    check_prompt_name(name)
    if not model_name:
        raise invalid("a prompt must name the model it was written for", field="model_name")
    check_model_name(model_name)
    if model_version < 0:
        raise invalid("model_version must be 0 (the champion) or a version number", field="model_version")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise invalid(f"the template has {len(template)} characters; at most {MAX_TEMPLATE_CHARS}", field="template")
    try:
        derived = template_variables(template)
        sampling = canonical_sampling(sampling_parameters)
    except PromptError as exc:
        raise invalid(str(exc)) from None
    _check_finite(sampling)
    if variables and sorted(set(variables)) != derived:
        extra, missing = sorted(set(variables) - set(derived)), sorted(set(derived) - set(variables))
        raise invalid("the variables listed do not match the template's: "
                      + "; ".join(p for p in (f"not in the template: {', '.join(extra)}" if extra else "",
                                              f"not listed: {', '.join(missing)}" if missing else "") if p),
                      field="variables")
    return PromptVersion(name, 0, template, derived, model_name, model_version, sampling,
                         prompt_digest(template, model_name, model_version, sampling), description, author)
