"""Training-set snapshots: Parquet bytes plus a manifest, stored under their sha256 in ``loopline-datasets``."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from loopline_core.objstore import ObjectStore

from loopline_feature.domain.training import TrainingSet

BUCKET = "loopline-datasets"
FIXED = ("event_id", "entity_id", "event_time", "label_time", "label")


@dataclass(frozen=True)
class Snapshot:
    uri: str
    manifest_uri: str
    digest: str


def to_parquet(ts: TrainingSet) -> bytes:
    """The set as Parquet: the fixed columns, one float64 column per feature in model order, then one
    string column per string field of the view (what evaluations slice by).
    The same set always gives the same bytes (no timestamps or writer ids in the file)."""
    columns: dict[str, Any] = {
        "event_id": pa.array(ts.event_ids, pa.string()), "entity_id": pa.array(ts.entity_ids, pa.string()),
        "event_time": pa.array(ts.event_times, pa.float64()), "label_time": pa.array(ts.label_times, pa.float64()),
        "label": pa.array(ts.labels, pa.float64())}
    for j, name in enumerate(ts.feature_names):
        columns[name] = pa.array([row[j] for row in ts.features], pa.float64())
    for name, values in ts.strings.items():  # slice columns; a feature of the same name wins
        columns.setdefault(name, pa.array(values, pa.string()))
    # No as_of here: two builds that select the same rows are the same set, with the same digest.
    table = pa.table(columns).replace_schema_metadata({"loopline.view": ts.view})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    return buf.getvalue()


async def store(objects: ObjectStore, ts: TrainingSet) -> Snapshot:
    """Write the Parquet and its manifest unless that digest is already stored."""
    data = await asyncio.to_thread(to_parquet, ts)  # off the loop that serves online reads
    digest = hashlib.sha256(data).hexdigest()
    prefix = f"{ts.view.replace(':', '/v')}/{digest}"
    key, manifest_key = f"{prefix}.parquet", f"{prefix}.manifest.json"
    if not await objects.exists(BUCKET, manifest_key):
        await objects.put_bytes(BUCKET, key, data, metadata={"sha256": digest})
        slices = [n for n in ts.strings if n not in ts.feature_names]
        manifest = {"sha256": digest, "bytes": len(data), "rows": len(ts.labels), "positives": ts.positives,
                    "view": ts.view, "first_as_of": ts.as_of, "feature_names": ts.feature_names,
                    "columns": [*FIXED, *ts.feature_names, *slices], "uri": f"s3://{BUCKET}/{key}"}
        await objects.put_bytes(BUCKET, manifest_key, json.dumps(manifest, indent=2).encode(),
                                content_type="application/json")
    return Snapshot(f"s3://{BUCKET}/{key}", f"s3://{BUCKET}/{manifest_key}", digest)
