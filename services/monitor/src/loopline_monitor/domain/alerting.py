"""Alert episodes with N-of-M hysteresis, deduplication, repeats and silences. Pure.

One state per (model, version, kind). An episode opens when N of the last M evaluations crossed
the condition (one ``raise``), repeats every ``repeat_s`` while it stays open (as Alertmanager's
repeat interval does, so a trigger that was skipped is tried again), and resolves when N of the
last M did not cross. A silenced key keeps its state but says nothing.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

SEVERITIES = ("warning", "critical")


class Action(StrEnum):
    RAISE = "raise"
    REPEAT = "repeat"
    RESOLVE = "resolve"
    NONE = "none"


@dataclass(frozen=True)
class Policy:
    n: int = 2
    m: int = 3
    repeat_s: float = 300.0
    """0: never repeat."""


@dataclass(frozen=True)
class State:
    active: bool = False
    history: tuple[bool, ...] = ()
    """Crossed or not, newest last, at most M."""
    episode_id: str = ""
    repeat: int = 0
    last_sent: float = 0.0
    severity: str = ""
    onset: float = 0.0
    last_clear_end: float = 0.0
    """The window end of the newest evaluation that did not cross: a new episode's onset."""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> State:
        return cls(bool(d["active"]), tuple(bool(x) for x in d["history"]), str(d["episode_id"]), int(d["repeat"]),
                   float(d["last_sent"]), str(d["severity"]), float(d["onset"]), float(d["last_clear_end"]))


@dataclass(frozen=True)
class Step:
    state: State
    action: Action


def step(s: State, crossed: bool, severity: str, *, now: float, window_start: float, window_end: float,
         policy: Policy, new_id: str) -> Step:
    """The next state after one evaluation. ``new_id`` names the episode a raise would open."""
    history = (*s.history, crossed)[-policy.m:]
    s = replace(s, history=history)
    if not crossed:
        s = replace(s, last_clear_end=window_end)
    hits = sum(history)
    if not s.active:
        if crossed and hits >= policy.n:
            onset = s.last_clear_end or window_start
            return Step(replace(s, active=True, episode_id=new_id, repeat=1, last_sent=now, severity=severity,
                                onset=onset), Action.RAISE)
        return Step(s, Action.NONE)
    if len(history) - hits >= policy.n and not crossed:
        return Step(replace(s, active=False, repeat=0, severity="", episode_id=s.episode_id), Action.RESOLVE)
    worse = crossed and SEVERITIES.index(severity) > SEVERITIES.index(s.severity or "warning")
    due = policy.repeat_s > 0 and now - s.last_sent >= policy.repeat_s
    if crossed and (worse or due):
        return Step(replace(s, repeat=s.repeat + 1, last_sent=now, severity=severity), Action.REPEAT)
    return Step(s, Action.NONE)


@dataclass(frozen=True)
class Silence:
    """Alertmanager-style: matchers on model, version and kind (``*`` and globs), until a time."""

    model: str = "*"
    version: str = "*"
    kind: str = "*"
    until: float = float("inf")
    reason: str = ""

    def matches(self, model: str, version: int, kind: str, now: float) -> bool:
        return now < self.until and fnmatch.fnmatchcase(model, self.model) and \
            fnmatch.fnmatchcase(str(version), self.version) and fnmatch.fnmatchcase(kind, self.kind)


def silenced(silences: list[Silence], model: str, version: int, kind: str, now: float) -> Silence | None:
    return next((x for x in silences if x.matches(model, version, kind, now)), None)
