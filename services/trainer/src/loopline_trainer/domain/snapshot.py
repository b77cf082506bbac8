"""Decoding a training-set snapshot the feature service wrote (Parquet, addressed by its sha256). Pure."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from loopline_core.errors import invalid

SLICE_COLUMNS = ("country", "merchant_category")


@dataclass(frozen=True)
class Snapshot:
    """Rows in event-time order."""

    feature_names: list[str]
    x: np.ndarray
    """float32, columns in ``feature_names`` order."""
    y: np.ndarray
    event_time: np.ndarray
    """Seconds since the epoch (float64)."""
    strings: dict[str, np.ndarray]
    """The slice columns the snapshot carries (country, merchant_category)."""

    def __len__(self) -> int:
        return len(self.y)

    def tail(self, n: int) -> Snapshot:
        """The newest ``n`` rows (all of them when ``n`` is 0 or larger than the set)."""
        if n <= 0 or n >= len(self):
            return self
        return Snapshot(self.feature_names, self.x[-n:], self.y[-n:], self.event_time[-n:],
                        {k: v[-n:] for k, v in self.strings.items()})

    def since(self, start: float) -> Snapshot:
        """The rows whose event time is at or after ``start`` (epoch seconds; all of them when it is 0)."""
        if start <= 0:
            return self
        keep = self.event_time >= start
        return Snapshot(self.feature_names, self.x[keep], self.y[keep], self.event_time[keep],
                        {k: v[keep] for k, v in self.strings.items()})

    def columns(self, rows: slice) -> dict[str, np.ndarray]:
        """Feature and string columns by name, for slicing the evaluation."""
        out = {n: self.x[rows, i] for i, n in enumerate(self.feature_names)}
        out.update({k: v[rows] for k, v in self.strings.items()})
        return out


def decode(data: bytes, feature_names: list[str], digest: str) -> Snapshot:
    """Bytes that do not hash to ``digest`` are refused, so a model is never trained on a set other than
    the one its lineage names."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise invalid(f"training set sha256 {actual[:12]} does not match its digest {digest[:12]}")
    table = pq.read_table(io.BytesIO(data))
    missing = [n for n in [*feature_names, "label", "event_time"] if n not in table.column_names]
    if missing:
        raise invalid(f"training set lacks columns {missing}")
    x = np.column_stack([table[n].to_numpy() for n in feature_names]).astype(np.float32) if feature_names \
        else np.zeros((table.num_rows, 0), dtype=np.float32)
    times = table["event_time"]
    if pa.types.is_timestamp(times.type):
        seconds = times.cast(pa.timestamp("us", tz=times.type.tz)).cast(pa.int64()).to_numpy() / 1e6
    else:
        seconds = times.to_numpy().astype(np.float64)
    strings = {c: np.asarray(table[c].to_pylist(), dtype=object).astype(str)
               for c in SLICE_COLUMNS if c in table.column_names}
    return Snapshot(list(feature_names), x, table["label"].to_numpy().astype(np.float32),
                    np.asarray(seconds, dtype=np.float64), strings)
