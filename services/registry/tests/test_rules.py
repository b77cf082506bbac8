"""The registry's pure rules, without a database."""

from __future__ import annotations

import json

import pytest
from loopline_core.errors import ErrorKind, LooplineError
from loopline_registry.domain import rules
from loopline_registry.domain.models import Action, AliasChange, Approval, Stage, Version

PASSED = {"passed": True, "checks": [{"metric": "auc", "kind": "absolute", "threshold": 0.5, "value": 0.9,
                                      "passed": True}]}
FAILED = {"passed": False, "checks": [
    {"metric": "auc", "kind": "absolute", "threshold": 0.5, "value": 0.9, "passed": True},
    {"metric": "recall_at_1pct_fpr", "slice": "country=DE", "kind": "change", "threshold": -0.02, "value": -0.1,
     "passed": False}]}


def _v(number: int = 1, stage: Stage = Stage.CANDIDATE, gate: dict | None = None,  # type: ignore[type-arg]
       approval: Approval | None = None) -> Version:
    return Version("fraud", number, "s3://m/a", "s3://m/a.sig", "k", "d", f"r{number}", stage=stage, gate=gate,
                   approval=approval)


def _kind(fn: object, *args: object, **kw: object) -> tuple[ErrorKind, str]:
    with pytest.raises(LooplineError) as err:
        fn(*args, **kw)  # type: ignore[operator]
    return err.value.kind, err.value.message


def _change(n: int, action: Action, frm: int, to: int) -> AliasChange:
    return AliasChange(n, "fraud", "champion", frm, to, "a", "r", 0.0, action.value)


def test_stage_changes() -> None:
    assert rules.check_stage_change(_v(), Stage.STAGING, []) is True
    assert rules.check_stage_change(_v(stage=Stage.STAGING), Stage.CANDIDATE, []) is True
    assert rules.check_stage_change(_v(stage=Stage.STAGING), Stage.STAGING, []) is False, "already there: no-op"
    assert rules.check_stage_change(_v(stage=Stage.DEPRECATED), Stage.RETIRED, []) is True
    kind, msg = _kind(rules.check_stage_change, _v(stage=Stage.RETIRED), Stage.CANDIDATE, [])
    assert kind is ErrorKind.FAILED_PRECONDITION and "retired" in msg
    kind, msg = _kind(rules.check_stage_change, _v(), Stage.PRODUCTION, [])
    assert kind is ErrorKind.FAILED_PRECONDITION and "champion" in msg
    for target in (Stage.RETIRED, Stage.DEPRECATED):
        kind, msg = _kind(rules.check_stage_change, _v(stage=Stage.PRODUCTION), target, ["champion"])
        assert kind is ErrorKind.FAILED_PRECONDITION and "move the alias first" in msg
    kind, _ = _kind(rules.check_stage_change, _v(stage=Stage.PRODUCTION), Stage.STAGING, ["champion"])
    assert kind is ErrorKind.FAILED_PRECONDITION
    assert _kind(rules.check_stage_change, _v(stage=Stage.DEPRECATED), Stage.STAGING, [])[0] is \
        ErrorKind.FAILED_PRECONDITION
    assert _kind(rules.parse_stage, "gold")[0] is ErrorKind.INVALID_ARGUMENT


def test_who_may_hold_an_alias() -> None:
    rules.check_can_hold(_v(gate=PASSED), "champion", requires_approval=False, override_reason="")
    kind, msg = _kind(rules.check_can_hold, _v(gate=FAILED), "champion", requires_approval=False, override_reason="")
    assert kind is ErrorKind.FAILED_PRECONDITION and "gate" in msg and "recall_at_1pct_fpr [country=DE]" in msg
    assert "auc " not in msg, "only the failing checks are named"
    assert "no gate" in _kind(rules.check_can_hold, _v(), "challenger", requires_approval=False,
                              override_reason="")[1], "a missing gate is a gate that did not pass"
    rules.check_can_hold(_v(gate=FAILED), "champion", requires_approval=False, override_reason="incident 42")
    kind, msg = _kind(rules.check_can_hold, _v(stage=Stage.RETIRED, gate=PASSED), "champion",
                      requires_approval=False, override_reason="I insist")
    assert kind is ErrorKind.FAILED_PRECONDITION and "retired" in msg, "no override brings back a retired version"
    kind, msg = _kind(rules.check_can_hold, _v(gate=PASSED), "champion", requires_approval=True, override_reason="")
    assert kind is ErrorKind.FAILED_PRECONDITION and "approv" in msg
    rules.check_can_hold(_v(gate=PASSED), "challenger", requires_approval=True, override_reason="")
    rules.check_can_hold(_v(gate=PASSED, approval=Approval("a", "r", 1.0)), "champion", requires_approval=True,
                         override_reason="")


def test_compare_and_set() -> None:
    rules.check_expected("fraud", "champion", None, 3)
    rules.check_expected("fraud", "champion", 3, 3)
    rules.check_expected("fraud", "champion", 0, 0)
    with pytest.raises(LooplineError) as err:
        rules.check_expected("fraud", "champion", 2, 3)
    assert err.value.kind is ErrorKind.ABORTED and "held by v3" in err.value.message
    assert err.value.details == {"current_version": "3"}
    with pytest.raises(LooplineError) as err:
        rules.check_expected("fraud", "champion", 2, 0)
    assert err.value.details == {"current_version": "0"} and "not set" in err.value.message


def test_approval_needs_a_gated_staged_version() -> None:
    rules.check_approvable(_v(stage=Stage.STAGING, gate=PASSED))
    assert "staging" in _kind(rules.check_approvable, _v(gate=PASSED))[1]
    assert "gate" in _kind(rules.check_approvable, _v(stage=Stage.STAGING, gate=FAILED))[1]
    assert "retired" in _kind(rules.check_approvable, _v(stage=Stage.RETIRED, gate=PASSED))[1]


def test_rollback_walks_back_instead_of_toggling() -> None:
    history = [_change(4, Action.ROLLBACK, 3, 2), _change(3, Action.SET, 2, 3), _change(2, Action.APPROVE, 1, 2),
               _change(1, Action.SET, 0, 1)]  # newest first
    assert rules.rollback_target(history, 3) == 2
    assert rules.rollback_target(history, 2) == 1, "the rollback row 3 -> 2 is not a way back to 3"
    assert rules.rollback_target(history, 1) == 0
    assert rules.rollback_target(history, 0) == 0


def test_champion_stages_and_evidence() -> None:
    assert rules.champion_stages(2, 1) == [(2, Stage.PRODUCTION), (1, Stage.DEPRECATED)]
    assert rules.champion_stages(2, 0) == [(2, Stage.PRODUCTION)]
    assert rules.champion_stages(0, 2) == [(2, Stage.DEPRECATED)]
    assert rules.evidence(json.dumps({"decision": "promote"}), PASSED) == {"caller": {"decision": "promote"},
                                                                           "gate": PASSED}
    assert rules.evidence("ticket 7", None) == {"caller": "ticket 7", "gate": None}
    assert rules.evidence("", None) == {"caller": None, "gate": None}
