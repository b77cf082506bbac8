"""Validator benchmark: the JSON-Schema contract (``contracts/transactions/v1.json``) against the hand
checks it replaced, same run, same records.

    python -m bench validator [--records N] [--rounds K] [--invalid F] [--seed S]

Two levels, each timed on both sides over the same N records (a fraction F of them broken in the
ways producers break them). Within each round both sides run over the same slices of records,
alternating which goes first, so a busy shared machine slows both alike; the ratio reported is
the median of the K rounds' ratios:

1. ``check``: a decoded record through the contract check (a rejected record raises, with every
   violation in its reason, as the validator needs for its dead letter).
2. ``decode``: the validator's whole per-record step from the Kafka record: parse the envelope,
   decode the payload, check it, and (new side only) stamp the contract version on the envelope.

The peer is the hand-check code as it stood before contracts became files, copied below
(``_Old``), so the comparison does not depend on git history. Figures go to the terminal and to
``bench/results/validator-<utc time>.json``. No servers are needed.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopline.ingest.v1.envelope_pb2 import EventIngested
from loopline_core.contracts import Contracts
from loopline_core.errors import LooplineError, invalid
from loopline_core.events import metadata
from loopline_core.jsonx import loads_strict
from loopline_core.kafka import Record, TopicNamer
from loopline_core.kafka.codec import proto
from loopline_validator.handlers.ingested import IngestedHandler
from loopline_validator.metrics import VALIDATED
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
console = Console(stderr=True)


# ---- the peer: the hand checks as they were (services/validator/.../domain/contracts.py) --------

@dataclass(frozen=True)
class _Field:
    name: str
    kind: type | tuple[type, ...]
    required: bool = True
    min: float | None = None
    max: float | None = None
    choices: frozenset[str] | None = None
    length: int | None = None


@dataclass(frozen=True)
class _Old:
    dataset: str
    version: str
    fields: tuple[_Field, ...]

    @property
    def ref(self) -> str:
        return f"{self.dataset}/{self.version}"

    def violations(self, record: Any) -> list[tuple[str, str, str]]:
        if not isinstance(record, dict):
            return [("", "type", "record must be a JSON object")]
        out = []
        for f in self.fields:
            if f.name not in record or record[f.name] is None:
                if f.required:
                    out.append((f.name, "required", f"{f.name} is required"))
                continue
            value: Any = record[f.name]
            if not _is(value, f.kind):
                out.append((f.name, "type", f"{f.name} must be {_kind(f.kind)}, got {type(value).__name__}"))
                continue
            if isinstance(value, float) and not math.isfinite(value):
                out.append((f.name, "finite", f"{f.name} must be a finite number"))
                continue
            if f.min is not None and value < f.min:
                out.append((f.name, "range", f"{f.name}={_short(value)} is below {f.min}"))
            if f.max is not None and value > f.max:
                out.append((f.name, "range", f"{f.name}={_short(value)} is above {f.max}"))
            if f.choices is not None and value not in f.choices:
                out.append((f.name, "enum", f"{f.name}={_short(value)} is not one of {sorted(f.choices)}"))
            if f.length is not None and len(value) != f.length:
                out.append((f.name, "length", f"{f.name} must have length {f.length}"))
        return out

    def check(self, record: Any) -> None:
        problems = self.violations(record)
        if problems:
            field, rule, _ = problems[0]
            raise invalid("; ".join(p[2] for p in problems), contract=self.ref, field=field, rule=rule)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    return not isinstance(value, bool) and isinstance(value, kind)


def _kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    words = {"int": "a number", "float": "a number", "str": "a string"}
    return " or ".join(dict.fromkeys(words.get(k.__name__, k.__name__) for k in kinds))


OLD = _Old("transactions", "v1", (
    _Field("event_id", str, required=False),
    _Field("customer_id", str),
    _Field("merchant_id", str),
    _Field("amount", (int, float), min=0, max=1_000_000),
    _Field("currency", str, length=3),
    _Field("country", str, length=2),
    _Field("merchant_category", str),
    _Field("ts", (int, float, str)),
    _Field("device", str, required=False),
))
_envelope = proto(EventIngested, "metadata.event_id")


def _old_decode(record: Record) -> tuple[str, str]:
    """The validator's decode before contracts were files, as it was (its dataset lookup a dict)."""
    msg = _envelope(record)
    contract = _OLD_CONTRACTS.get(msg.dataset)
    if contract is None:
        raise invalid(f"no contract for dataset {msg.dataset[:64]!r}")
    try:
        payload = loads_strict(msg.payload)
        contract.check(payload)
    except Exception:
        VALIDATED.labels(msg.dataset, "rejected").inc()
        raise
    return msg.dataset, contract.ref


_OLD_CONTRACTS = {OLD.dataset: OLD}


# ---- workload -----------------------------------------------------------------------------------

BREAKS: list[Callable[[dict[str, Any], random.Random], None]] = [
    lambda t, _r: t.pop("customer_id"),
    lambda t, _r: t.update(amount=-3),
    lambda t, _r: t.update(amount="12.5"),
    lambda t, _r: t.update(currency="EURO"),
    lambda t, _r: t.update(ts=True),
    lambda t, _r: t.update(country=None),
    lambda t, r: t.update(amount=r.uniform(1e6 + 1, 1e7), currency="E"),
]


def workload(n: int, invalid_share: float, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    out = []
    for i in range(n):
        txn: dict[str, Any] = {
            "event_id": f"e{i}", "customer_id": f"c{rng.randrange(1000)}", "merchant_id": f"m{rng.randrange(5000)}",
            "amount": round(rng.uniform(0, 2000), 2), "currency": rng.choice(["EUR", "USD", "GBP"]),
            "country": rng.choice(["NL", "DE", "FR"]), "merchant_category": rng.choice(["grocery", "travel"]),
            "ts": 1795341600 + i, "device": rng.choice(["ios", "web"])}
        if rng.random() < invalid_share:
            rng.choice(BREAKS)(txn, rng)
        out.append(txn)
    return out


def _records(txns: list[dict[str, Any]]) -> list[Record]:
    return [Record("loopline.ingested.transactions", 0, n, b"c", EventIngested(
        metadata=metadata("bench", t.get("event_id", f"x{n}")), dataset="transactions",
        content_type="application/json", payload=json.dumps(t).encode()).SerializeToString())
        for n, t in enumerate(txns)]


def _time(step: Callable[[Any], Any], items: list[Any]) -> tuple[float, int]:
    """Seconds ``step`` takes over ``items`` (a raised LooplineError counts as a rejection)."""
    rejected = 0
    started = time.perf_counter()
    for item in items:
        try:
            step(item)
        except LooplineError:
            rejected += 1
    return time.perf_counter() - started, rejected


def _round(new: Callable[[Any], Any], old: Callable[[Any], Any], items: list[Any],
           chunk: int) -> tuple[float, float, int, int]:
    """Records/s of each side over ``items``, timed chunk by chunk, alternating which side goes
    first, so both meet the same load on a shared machine."""
    spent = {"new": 0.0, "old": 0.0}
    rejected = {"new": 0, "old": 0}
    for n, start in enumerate(range(0, len(items), chunk)):
        part = items[start:start + chunk]
        order = (("new", new), ("old", old)) if n % 2 == 0 else (("old", old), ("new", new))
        for side, step in order:
            seconds, rej = _time(step, part)
            spent[side] += seconds
            rejected[side] += rej
    return len(items) / spent["new"], len(items) / spent["old"], rejected["new"], rejected["old"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    contract = Contracts.load(ROOT / "contracts", strict=True).current("transactions")
    handler = IngestedHandler(None, TopicNamer(), Contracts.load(ROOT / "contracts", strict=True))  # type: ignore[arg-type]
    txns = workload(args.records, args.invalid, args.seed)
    records = _records(txns)

    def new_decode(record: Record) -> Any:
        out = handler.decode(record)
        if not hasattr(out, "envelope"):
            raise out.error
        return out

    levels = {"check": ((contract.check, OLD.check), txns), "decode": ((new_decode, _old_decode), records)}
    result: dict[str, Any] = {"params": vars(args), "levels": {}, "host": platform.node(),
                              "python": platform.python_version(), "at": datetime.now(UTC).isoformat()}
    for level, ((new, old), items) in levels.items():
        _time(new, items[:2000])
        _time(old, items[:2000])  # warm both
        new_rates, old_rates, rejections = [], [], set()
        for _ in range(args.rounds):
            new_rps, old_rps, rej_new, rej_old = _round(new, old, items, args.chunk)
            new_rates.append(new_rps)
            old_rates.append(old_rps)
            rejections.add((rej_new, rej_old))
        new_med, old_med = statistics.median(new_rates), statistics.median(old_rates)
        ratios = sorted(n / o for n, o in zip(new_rates, old_rates, strict=True))
        result["levels"][level] = {"contract_rps": new_med, "hand_checks_rps": old_med,
                                   "ratio": statistics.median(ratios), "ratios": ratios,
                                   "rejected": sorted(rejections)}
    return result


def show(result: dict[str, Any]) -> None:
    p = result["params"]
    table = Table(title=f"validator: {p['records']:,} records ({p['invalid']:.0%} broken) x {p['rounds']} rounds, "
                        "median records/s")
    for col in ("level", "JSON-Schema contract", "hand checks (peer)", "ratio (median of rounds)",
                "rejected (new/old)"):
        table.add_column(col, justify="right")
    for level, row in result["levels"].items():
        table.add_row(level, f"{row['contract_rps']:,.0f}", f"{row['hand_checks_rps']:,.0f}", f"{row['ratio']:.2f}x",
                      ", ".join(f"{a}/{b}" for a, b in row["rejected"]))
    Console().print(table)


def save(result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"validator-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench validator", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--invalid", type=float, default=0.1, help="share of broken records (default 0.1)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=500, help="records per timed slice (sides alternate)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    show(result)
    console.print(f"figures written to {save(result).relative_to(ROOT)}")
    worst = min(row["ratio"] for row in result["levels"].values())
    if worst < 0.9:
        console.print(f"[red]the contract is {1 - worst:.0%} slower than the hand checks (bar: 10 %)[/]")
        sys.exit(1)


if __name__ == "__main__":
    main()
