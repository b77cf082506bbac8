"""Reading a training-set snapshot the feature service wrote (Parquet, addressed by its sha256)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow.parquet as pq
from loopline_core.errors import invalid


def training_arrays(data: bytes, feature_names: list[str], digest: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X float32 in the given column order, y float32)``; bytes that do not hash to ``digest`` are
    refused, so a model is never trained on a set other than the one its lineage names."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise invalid(f"training set sha256 {actual[:12]} does not match its digest {digest[:12]}")
    table = pq.read_table(io.BytesIO(data))
    missing = [n for n in [*feature_names, "label"] if n not in table.column_names]
    if missing:
        raise invalid(f"training set lacks columns {missing}")
    x = np.column_stack([table[n].to_numpy() for n in feature_names]).astype(np.float32)
    return x, table["label"].to_numpy().astype(np.float32)
