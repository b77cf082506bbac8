"""The registry's rules: who may hold an alias, how stages move, what a rollback goes back to.

Pure functions over domain types; the store calls them under the model's lock, with the rows it
just read, so a rule always judges the current state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from loopline_core.errors import aborted, invalid, precondition

from loopline_registry.domain.models import CHAMPION, Action, AliasChange, Stage, Version

# PRODUCTION is absent on purpose: it follows the champion alias, never a SetStage call.
_NEXT = {
    Stage.CANDIDATE: {Stage.STAGING, Stage.DEPRECATED, Stage.RETIRED},
    Stage.STAGING: {Stage.CANDIDATE, Stage.DEPRECATED, Stage.RETIRED},
    Stage.PRODUCTION: {Stage.DEPRECATED, Stage.RETIRED},
    Stage.DEPRECATED: {Stage.RETIRED},
    Stage.RETIRED: set(),
}
# Only these audit actions say "the alias went from A to B by choice"; a rollback row is not one,
# so a second rollback walks further back instead of undoing the first.
_FORWARD = (Action.SET, Action.APPROVE)


def parse_stage(value: str) -> Stage:
    try:
        return Stage(value)
    except ValueError:
        raise invalid(f"stage must be one of {', '.join(s.value for s in Stage)}: {value!r}") from None


def check_stage_change(v: Version, target: Stage, aliases: Iterable[str]) -> bool:
    """SetStage: RETIRED is terminal, PRODUCTION follows the champion, an alias holder keeps serving.
    False when ``v`` is at ``target`` already (nothing to do, so a redelivered request is harmless)."""
    held = sorted(aliases)
    if v.stage is Stage.RETIRED:
        raise precondition(f"{v.label} is retired; retirement is final")
    if target is Stage.PRODUCTION:
        raise precondition("production is not set directly: it follows the champion alias (SetAlias)")
    if target is v.stage:
        return False
    if held and target in (Stage.RETIRED, Stage.DEPRECATED):
        raise precondition(f"{v.label} holds {', '.join(held)}; move the alias first, then make it {target}")
    if CHAMPION in held:
        raise precondition(f"{v.label} holds champion; its stage follows the alias")
    if target not in _NEXT[v.stage]:
        raise precondition(f"{v.label} cannot go from {v.stage} to {target}")
    return True


def gate_failures(gate: dict[str, Any] | None) -> str:
    """The failing checks of a gate, for a refusal message."""
    if not gate:
        return "no gate was recorded"
    failed = [c for c in gate.get("checks", []) if not c.get("passed")]
    if not failed:
        return gate.get("summary") or "the gate did not pass"
    parts = []
    for c in failed:
        where = f" [{c['slice']}]" if c.get("slice") else ""
        detail = f" ({c['detail']})" if c.get("detail") else ""
        parts.append(f"{c.get('metric', '?')}{where} {c.get('kind', 'absolute')}: {float(c.get('value', 0.0)):.4g}"
                     f" vs threshold {float(c.get('threshold', 0.0)):.4g}{detail}")
    return "; ".join(parts)


def check_can_hold(v: Version, alias: str, *, requires_approval: bool, override_reason: str) -> None:
    """May ``v`` get ``alias``? Retired never; a failed gate or a missing approval only with an override."""
    if v.stage is Stage.RETIRED or v.deleted:
        raise precondition(f"{v.label} is retired and cannot get an alias (an override does not change that)")
    if override_reason:
        return
    if not v.gate_passed:
        raise precondition(f"{v.label}'s gate did not pass: {gate_failures(v.gate)}; "
                           "an override_reason is needed to move an alias to it")
    if alias == CHAMPION and requires_approval and v.approval is None:
        raise precondition(f"{v.model_name} requires approval before a version becomes champion; "
                           f"{v.label} is not approved (stage it and call ApproveModelVersion)")


def check_expected(model: str, alias: str, expected: int | None, current: int) -> None:
    """Compare-and-set: ABORTED, naming the holder, when the caller's view is stale."""
    if expected is None or expected == current:
        return
    holder = f"held by v{current}" if current else "not set"
    raise aborted(f"{alias} of {model} is {holder}, not v{expected}" if expected else
                  f"{alias} of {model} is {holder}, not unset as expected", current_version=str(current))


def check_approvable(v: Version) -> None:
    if v.stage is Stage.RETIRED or v.deleted:
        raise precondition(f"{v.label} is retired")
    if v.stage is not Stage.STAGING:
        raise precondition(f"{v.label} is {v.stage}; only a staging version can be approved")
    if not v.gate_passed:
        raise precondition(f"{v.label}'s gate did not pass: {gate_failures(v.gate)}")


def rollback_target(changes: Iterable[AliasChange], current: int) -> int:
    """The version that held the alias before ``current``: the ``from`` of the newest forward move to
    ``current`` (``changes`` newest first). 0 when there is none."""
    if not current:
        return 0
    for c in changes:
        if c.action in _FORWARD and c.to_version == current:
            return c.from_version
    return 0


def champion_stages(new: int, previous: int) -> list[tuple[int, Stage]]:
    """The stage changes that follow a champion move: the new holder serves, the old one steps down."""
    out = [(new, Stage.PRODUCTION)] if new else []
    if previous and previous != new:
        out.append((previous, Stage.DEPRECATED))
    return out


def evidence(caller: str, gate: dict[str, Any] | None) -> dict[str, Any]:
    """What an audit row keeps: the caller's evidence (JSON when it parses) and the target's gate."""
    parsed: Any
    try:
        parsed = json.loads(caller) if caller else None
    except ValueError:
        parsed = caller
    return {"caller": parsed, "gate": gate}
