"""Incremental windows over a version's predictions. Pure.

A window keeps its rows in arrival order and, per column, a running count of each distinct value
(plus the same for the scores), so adding a row and evicting one are O(columns) and an evaluation
reads the counts, never the rows. The counts are the exact distribution of the window (a
``loopline_ml.drift.Dist`` per column), which is what makes the drift statistics equal to
Evidently's on the raw sample.

Specs: ``count:N`` (tumbling every N rows), ``count:N/S`` (the last N rows, evaluated every S),
``time:Ts`` and ``time:Ts/Ss`` (the same by the predictions' event time, in seconds).
"""

from __future__ import annotations

import math
import re
from collections import Counter, deque
from dataclasses import dataclass

from loopline_core.errors import invalid
from loopline_ml.drift import Dist

_SPEC = re.compile(r"^(count|time):(\d+(?:\.\d+)?)(s?)(?:/(\d+(?:\.\d+)?)(s?))?$")


@dataclass(frozen=True)
class Spec:
    by: str
    """"count" or "time"."""
    size: float
    step: float

    @classmethod
    def parse(cls, text: str) -> Spec:
        m = _SPEC.match(text.strip())
        if not m:
            raise invalid(f"window spec {text!r}: expected count:N[/S] or time:Ts[/Ss]")
        by, size = m.group(1), float(m.group(2))
        step = float(m.group(4)) if m.group(4) else size
        if size <= 0 or step <= 0 or step > size or (by == "count" and (size != int(size) or step != int(step))):
            raise invalid(f"window spec {text!r}: need 0 < step <= size (whole rows for count windows)")
        return cls(by, size, step)

    def __str__(self) -> str:
        unit = "s" if self.by == "time" else ""
        size, step = f"{self.size:g}{unit}", f"{self.step:g}{unit}"
        return f"{self.by}:{size}" if self.size == self.step else f"{self.by}:{size}/{step}"


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    """The row's position in the monitor's store (monotonic): what an evaluation covered."""
    at: float
    """Event time of the prediction (epoch seconds)."""
    values: tuple[float, ...]
    score: float
    latency_ms: float
    failed: bool
    out_of_range: bool


@dataclass(frozen=True)
class Snapshot:
    """What one evaluation reads."""

    size: int
    start: float
    end: float
    last_seq: int
    columns: dict[str, Dist]
    prediction: Dist
    latency: Counter[int]
    """Rows per latency bucket (see :func:`latency_quantile`)."""
    failed: int
    out_of_range: int


LATENCY_BOUNDS = tuple(0.05 * 1.25 ** i for i in range(64))
"""Latency buckets (ms, each 25 % wider than the last, 0.05 ms to ~80 s): a percentile within 25 %."""


def latency_bucket(ms: float) -> int:
    return min(len(LATENCY_BOUNDS) - 1, max(0, math.ceil(math.log(max(ms, 0.05) / 0.05, 1.25))))


def latency_quantile(buckets: Counter[int], q: float) -> float:
    """The upper bound of the bucket holding the ``q`` quantile (0 with no rows)."""
    total = sum(buckets.values())
    if not total:
        return 0.0
    seen, rank = 0, q * total
    for b in sorted(buckets):
        seen += buckets[b]
        if seen >= rank:
            return LATENCY_BOUNDS[b]
    return LATENCY_BOUNDS[-1]


class Window:
    def __init__(self, spec: Spec, names: list[str]) -> None:
        self.spec = spec
        self.names = names
        self.rows: deque[Row] = deque()
        self._counts = [Counter[float]() for _ in names]
        self._scores = Counter[float]()
        self._latency = Counter[int]()
        self._failed = 0
        self._out = 0
        self._since = 0
        self._next_end: float | None = None
        self._pending: Row | None = None
        self.evaluated_seq = 0

    def add(self, row: Row) -> bool:
        """Add a row; True when an evaluation is due: call :meth:`snapshot`, then :meth:`evaluated`
        (a time window holds the row that crossed its step boundary until then)."""
        if self.spec.by == "count":
            self._push(row)
            while len(self.rows) > self.spec.size:
                self._apply(self.rows.popleft(), -1)
            return self._since >= self.spec.step and len(self.rows) >= self.spec.size
        if self._next_end is None:
            self._next_end = (math.floor(row.at / self.spec.step) + 1) * self.spec.step
        if row.at < self._next_end - self.spec.size:
            return False  # older than the whole window: its windows were evaluated already
        if row.at >= self._next_end and self.rows:
            self._pending = row
            return True
        self._push(row)
        return False

    def snapshot(self) -> Snapshot:
        if self.spec.by == "time" and self._next_end is not None:
            while self.rows and self.rows[0].at < self._next_end - self.spec.size:
                self._apply(self.rows.popleft(), -1)
        rows = self.rows
        return Snapshot(len(rows), min((r.at for r in rows), default=0.0), max((r.at for r in rows), default=0.0),
                        rows[-1].seq if rows else 0,
                        {n: Dist.from_counts(c) for n, c in zip(self.names, self._counts, strict=True)},
                        Dist.from_counts(self._scores), Counter(self._latency), self._failed, self._out)

    def evaluated(self) -> None:
        """Mark the snapshot just taken as evaluated."""
        self._since = 0
        if self.rows:
            self.evaluated_seq = max(self.evaluated_seq, self.rows[-1].seq)
        pending, self._pending = self._pending, None
        if pending is not None and self._next_end is not None:
            while self._next_end <= pending.at:
                self._next_end += self.spec.step
            self._push(pending)

    def _push(self, row: Row) -> None:
        self.rows.append(row)
        self._apply(row, 1)
        self._since += 1

    def _apply(self, row: Row, sign: int) -> None:
        if not row.failed:
            for c, v in zip(self._counts, row.values, strict=True):
                c[v] += sign
                if c[v] == 0:
                    del c[v]
            self._scores[row.score] += sign
            if self._scores[row.score] == 0:
                del self._scores[row.score]
        b = latency_bucket(row.latency_ms)
        self._latency[b] += sign
        if self._latency[b] == 0:
            del self._latency[b]
        self._failed += sign * row.failed
        self._out += sign * row.out_of_range

    def restore(self, rows: list[Row], evaluated_seq: int, next_end: float | None) -> None:
        """Rebuild after a restart from the stored rows (oldest first) and the last evaluation's marks."""
        self.evaluated_seq = evaluated_seq
        self._next_end = next_end
        for r in rows:
            if self.spec.by == "time" and next_end is not None and not (next_end - self.spec.size <= r.at):
                continue
            self._push(r)
            if self.spec.by == "count" and len(self.rows) > self.spec.size:
                self._apply(self.rows.popleft(), -1)
        self._since = sum(1 for r in self.rows if r.seq > evaluated_seq)

    @property
    def next_end(self) -> float | None:
        return self._next_end
