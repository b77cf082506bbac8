"""Evidently's own drift report of a window against the reference, and what it decided, read back.

The monitor keeps windows as counts (:class:`~loopline_ml.drift.Dist`); Evidently wants rows. A count is
its raw sample exactly, so the rows rebuilt here give Evidently the same data it would have seen. Columns
of different lengths (a value missing in some rows) are padded with NaN, which Evidently drops per column.
Evidently is imported only when a report is made: it is slow to import and the hot path never needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from loopline_ml.drift import DISPLAY_NAMES, ColumnTest, Dist

PREDICTION = "prediction"


def render_report(ref: Mapping[str, Dist], cur: Mapping[str, Dist], types: Mapping[str, str],
                  prediction: tuple[Dist, Dist] | None = None, drift_share: float = 0.5) -> tuple[bytes, bytes]:
    """(HTML, JSON) of Evidently's ``Report([DataDriftPreset(drift_share=...)])`` on the samples of ``ref``
    and ``cur``, column types set explicitly; the prediction scores (reference, current) as a numeric column
    ``prediction`` when given (so it counts in the report's drifted share). Synchronous and CPU-bound: run it
    in a thread."""
    ref_cols, cur_cols, kinds = dict(ref), dict(cur), dict(types)
    if prediction is not None:
        if PREDICTION in kinds:
            raise ValueError(f"a feature is already named {PREDICTION!r}")
        ref_cols[PREDICTION], cur_cols[PREDICTION] = prediction
        kinds[PREDICTION] = "num"
    snapshot = run_preset(ref_cols, cur_cols, kinds, drift_share=drift_share)
    return snapshot.get_html_str(as_iframe=False).encode(), snapshot.json().encode()


def run_preset(ref: Mapping[str, Any], cur: Mapping[str, Any], types: Mapping[str, str],
               per_column_method: Mapping[str, str] | None = None, drift_share: float = 0.5) -> Any:
    """Evidently's ``Report([DataDriftPreset(...)], include_tests=True)`` run on columns given as Dists, arrays,
    or a pandas DataFrame taken as it is; its ``Snapshot``."""
    from evidently import DataDefinition, Dataset, Report  # noqa: PLC0415 - slow import, rarely needed
    from evidently.presets import DataDriftPreset  # noqa: PLC0415

    definition = DataDefinition(numerical_columns=[c for c, k in types.items() if k == "num"],
                                categorical_columns=[c for c, k in types.items() if k == "cat"])
    preset = DataDriftPreset(columns=list(types), drift_share=drift_share,
                             per_column_method=dict(per_column_method) if per_column_method else None)
    report = Report([preset], include_tests=True)
    return report.run(Dataset.from_pandas(_frame(cur, types), data_definition=definition),
                      Dataset.from_pandas(_frame(ref, types), data_definition=definition))


def read_drift(result: Mapping[str, Any], types: Mapping[str, str]) -> tuple[list[ColumnTest], float, bool]:
    """From a snapshot's ``dict()``: per column its test, score, threshold and decision, the share of drifted
    columns and the dataset decision, as Evidently reported them."""
    status = {t["metric_config"]["metric_id"]: t["status"] for t in result["tests"]}
    tests, share, dataset = [], 0.0, False
    for m in result["metrics"]:
        config = m["config"]
        if config["type"].endswith(":DriftedColumnsCount"):
            share = float(m["value"]["share"])
            dataset = status[m["id"]] == "FAIL"  # its test: share < drift_share
        elif config["type"].endswith(":ValueDrift"):
            name = config["column"]
            stattest = DISPLAY_NAMES.get(config["method"], config["method"])
            tests.append(ColumnTest(name, types[name], stattest, float(m["value"]), float(config["threshold"]),
                                    status[m["id"]] == "FAIL"))
    return tests, share, dataset


def _frame(cols: Mapping[str, Any], types: Mapping[str, str]) -> Any:
    import pandas as pd  # noqa: PLC0415

    if isinstance(cols, pd.DataFrame):
        return cols
    # rows in a fixed shuffled order: a sorted sample would draw Evidently's per-row plots as a ramp
    rng = np.random.default_rng(0)
    samples = {c: _rows(cols[c], rng) for c in types}
    rows = max((s.size for s in samples.values()), default=0)
    data = {}
    for c, s in samples.items():
        padded = np.full(rows, np.nan)
        padded[:s.size] = s
        data[c] = padded
    return pd.DataFrame(data)


def _rows(col: Dist | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if isinstance(col, Dist):
        return rng.permutation(col.sample())
    return np.asarray(col, np.float64)
