"""The Feast side of ``python -m bench features``: runs with the Feast venv's python, never imported.

    <feast venv>/bin/python bench/feast_peer.py setup SPEC.json   # repo + registry + online rows
    <feast venv>/bin/python bench/feast_peer.py read SPEC.json    # SDK answers for some entities
    <feast venv>/bin/python bench/feast_peer.py time SPEC.json    # SDK timing: closed loops, batch x concurrency

SPEC.json is written by bench/feature_online.py; each command prints one JSON object on its last
stdout line. Only the standard library and Feast's own dependencies are used here.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_YAML = """\
project: {project}
provider: local
registry: {registry}
online_store:
  type: postgres
  host: {host}
  port: {port}
  database: {database}
  db_schema: {schema}
  user: {user}
  password: unused-trust-auth
  sslmode: disable
  conn_type: pool
  min_conn: 1
  max_conn: {max_conn}
offline_store:
  type: file
entity_key_serialization_version: 3
"""

DEFINITIONS = '''\
"""Feature definitions of the benchmark's Feast repo (written by bench/feast_peer.py)."""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float64
from feast.value_type import ValueType

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
source = FileSource(name="{view}_source", path={parquet!r}, timestamp_field="event_timestamp")
{view} = FeatureView(
    name="{view}",
    entities=[customer],
    ttl=timedelta(days=7),
    schema=[{fields}],
    source=source,
    online=True,
)
'''


def setup(spec: dict[str, Any]) -> dict[str, Any]:
    """Write the repo, apply it, and write the rows Loopline served into Feast's online store."""
    import feast  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    repo = Path(spec["repo"])
    repo.mkdir(parents=True, exist_ok=True)
    pg = spec["postgres"]
    (repo / "feature_store.yaml").write_text(REPO_YAML.format(
        project=spec["project"], registry=repo / "registry.db", host=pg["host"], port=pg["port"],
        database=pg["database"], schema=pg["schema"], user=pg["user"], max_conn=spec.get("max_conn", 8)))
    names = spec["features"]
    rows = json.loads(Path(spec["rows"]).read_text())
    frame = pd.DataFrame({
        "customer_id": [r["entity_id"] for r in rows],
        "event_timestamp": pd.to_datetime([r["event_time"] for r in rows], unit="s", utc=True),
        **{name: [float(r["values"][i]) for r in rows] for i, name in enumerate(names)},
    })
    parquet = repo / "data" / f"{spec['view']}.parquet"
    parquet.parent.mkdir(exist_ok=True)
    frame.to_parquet(parquet)
    fields = ", ".join(f"Field(name={n!r}, dtype=Float64)" for n in names)
    (repo / "definitions.py").write_text(DEFINITIONS.format(view=spec["view"], parquet=str(parquet), fields=fields))

    started = time.perf_counter()
    sys.path.insert(0, str(repo))
    import definitions  # noqa: PLC0415

    store = feast.FeatureStore(repo_path=str(repo))
    store.apply([definitions.customer, getattr(definitions, spec["view"])])
    applied = time.perf_counter()
    store.write_to_online_store(spec["view"], frame)
    written = time.perf_counter()
    return {"feast_version": feast.__version__, "rows": len(frame), "apply_s": round(applied - started, 3),
            "write_s": round(written - applied, 3)}


def _refs(spec: dict[str, Any]) -> list[str]:
    return [f"{spec['view']}:{n}" for n in spec["features"]]


def read(spec: dict[str, Any]) -> dict[str, Any]:
    """Feast's SDK answer for ``spec["entities"]``: entity id -> values in ``spec["features"]`` order."""
    import feast  # noqa: PLC0415

    store = feast.FeatureStore(repo_path=spec["repo"])
    ids = spec["entities"]
    got = store.get_online_features(features=_refs(spec), entity_rows=[{"customer_id": e} for e in ids]).to_dict()
    return {"rows": {e: [got[n][i] for n in spec["features"]] for i, e in enumerate(ids)}}


def timed(spec: dict[str, Any]) -> dict[str, Any]:
    """Each of ``spec["runs"]`` ({batch, concurrency}) in turn, one FeatureStore for all: see :func:`timed_one`."""
    import feast  # noqa: PLC0415

    store = feast.FeatureStore(repo_path=spec["repo"])
    return {"runs": [timed_one(store, spec, run["batch"], run["concurrency"]) for run in spec["runs"]]}


def timed_one(store: Any, spec: dict[str, Any], batch: int, threads: int) -> dict[str, Any]:
    """Closed loop: ``threads`` threads call ``get_online_features`` with random batches of ``batch``
    entities for ``seconds`` (after ``warmup`` seconds not counted); latencies in ms, per call."""
    refs = _refs(spec)
    ids = spec["entities"]
    seconds, warmup = spec["seconds"], spec["warmup"]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    rows_seen = [0] * threads
    errors: list[str] = []
    start_at = time.perf_counter() + 0.2
    count_from = start_at + warmup
    stop_at = count_from + seconds

    def loop(k: int) -> None:
        # The same batches as the bench gives the other systems' worker k (bench/feature_online.py).
        rng = random.Random(spec["seed"] * 1000 + k)  # noqa: S311 - reproducible batches
        rows = [[{"customer_id": e} for e in rng.sample(ids, batch)] for _ in range(256)]
        mine = latencies[k]
        i = 0
        while time.perf_counter() < start_at:
            time.sleep(0.001)
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                out = store.get_online_features(features=refs, entity_rows=rows[i % 256]).to_dict()
                t1 = time.perf_counter()
                i += 1
                if t0 >= count_from:
                    mine.append((t1 - t0) * 1000)
                    rows_seen[k] += len(out["customer_id"])
        except Exception as exc:  # noqa: BLE001 - reported to the bench, which fails the measurement
            errors.append(f"{type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"batch": batch, "concurrency": threads, "latencies_ms": [x for xs in latencies for x in xs],
            "rows": sum(rows_seen), "errors": errors[:3]}


def main() -> int:
    command, spec_path = sys.argv[1], Path(sys.argv[2])
    spec = json.loads(spec_path.read_text())
    commands = {"setup": setup, "read": read, "time": timed}
    out = commands[command](spec)
    out["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
