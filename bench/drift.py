"""Drift benchmark: Loopline's drift statistics against Evidently's ``DataDriftPreset`` and scipy's ``ks_2samp``,
same data, same run.

    python -m bench drift [--rows 100000 --cols 20 --repeat 3 --shifted 5 --seed 7]

A reference of N rows x F numeric columns (normal, log-normal, uniform and rounded columns in turn) against a
window of N rows in which the first ``--shifted`` columns moved. Timed, each the median of ``--repeat`` runs
(the sides take turns within a repeat, so a busy shared machine slows all alike):

1. ``loopline``: ``drift_arrays`` on the raw arrays, Evidently's default test per column (normed Wasserstein
   above 1,000 reference rows), every column's score and decision and the dataset decision;
2. ``evidently``: ``Report([DataDriftPreset()])`` run on the same frames, column types given explicitly
   (its run also builds its plots: that is what the preset costs);
3. ``loopline ks`` and ``scipy ks_2samp``: the KS p-value of every column, Loopline's forced ``ks`` test vs
   scipy's ``ks_2samp`` column by column.

Then the statistics are compared: every column's test, score (to 1e-6) and decision and the dataset share
and decision against Evidently's; every KS p-value against scipy's. A mismatch fails the benchmark.
Figures go to the terminal and to ``bench/results/drift-<utc time>.json``. No servers are needed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from loopline_ml.drift import ColumnTest, drift_arrays
from loopline_ml.evidently_report import read_drift, run_preset
from rich.console import Console
from rich.table import Table
from scipy import stats

from bench.common import cli, code_under_test, machine, print_context

MEASURED_PATHS = ["libs/ml/loopline_ml/drift.py", "bench/drift.py"]
console = Console(stderr=True)
TOLERANCE = 1e-6


def workload(rows: int, cols: int, shifted: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference and window; columns take four shapes in turn, and the first ``shifted`` move."""
    rng = np.random.default_rng(seed)

    def column(j: int, n: int, moved: bool) -> np.ndarray:
        shift = 0.15 if moved else 0.0
        kind = j % 4
        if kind == 0:
            return rng.normal(shift, 1.0, n)
        if kind == 1:
            return rng.lognormal(shift, 1.0, n)
        if kind == 2:
            return rng.uniform(shift, 1.0 + shift, n)
        return np.round(rng.normal(50 + 10 * shift, 10, n), 1)  # few hundred distinct values, many ties

    ref = np.column_stack([column(j, rows, False) for j in range(cols)])
    cur = np.column_stack([column(j, rows, j < shifted) for j in range(cols)])
    return ref, cur


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd  # noqa: PLC0415

    load_before = os.getloadavg()
    code = code_under_test(MEASURED_PATHS)
    ref, cur = workload(args.rows, args.cols, args.shifted, args.seed)
    names = [f"f{j:02d}" for j in range(args.cols)]
    types = dict.fromkeys(names, "num")
    ks_all = dict.fromkeys(names, "ks")
    ref_df, cur_df = pd.DataFrame(ref, columns=names), pd.DataFrame(cur, columns=names)

    def loopline() -> tuple[list[ColumnTest], float, bool]:
        return drift_arrays(ref, cur, names, types)

    def evidently() -> Any:
        return run_preset(ref_df, cur_df, types)

    def loopline_ks() -> tuple[list[ColumnTest], float, bool]:
        return drift_arrays(ref, cur, names, types, stattests=ks_all)

    def scipy_ks() -> list[float]:
        return [float(stats.ks_2samp(ref[:, j], cur[:, j]).pvalue) for j in range(args.cols)]

    sides: dict[str, Callable[[], Any]] = {"loopline": loopline, "evidently": evidently,
                                           "loopline_ks": loopline_ks, "scipy_ks_2samp": scipy_ks}
    loopline()  # warm imports and caches on both sides alike
    run_preset(ref_df.head(2000), cur_df.head(2000), types)
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    last: dict[str, Any] = {}
    for i in range(args.repeat):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        for name in order:
            spent, last[name] = _timed(sides[name])
            seconds[name].append(spent)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    parity = check(last["loopline"], read_drift(last["evidently"].dict(), types), last["loopline_ks"],
                   last["scipy_ks_2samp"])
    result = {
        "benchmark": "drift", "name": "drift", "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": code, "params": vars(args), "seconds": seconds, "median_s": median,
        "ratios": {"evidently_over_loopline": median["evidently"] / median["loopline"],
                   "scipy_ks_over_loopline_ks": median["scipy_ks_2samp"] / median["loopline_ks"],
                   "scipy_ks_over_loopline": median["scipy_ks_2samp"] / median["loopline"]},
        "parity": parity,
        "columns": [{"column": t.column, "stattest": t.stattest, "score": t.score, "drifted": t.drifted}
                    for t in last["loopline"][0]],
        "dataset": {"share": last["loopline"][1], "drifted": last["loopline"][2]},
        "machine": machine(load_before),
    }
    if not parity["ok"]:
        show(result)
        raise RuntimeError(f"statistics differ: {parity['problems'][:5]}")
    return result


def check(ours: tuple[list[ColumnTest], float, bool], theirs: tuple[list[ColumnTest], float, bool],
          ours_ks: tuple[list[ColumnTest], float, bool], scipy_p: list[float]) -> dict[str, Any]:
    """Every column's test, score and decision and the dataset decision as Evidently's; KS as scipy's."""
    problems = []
    by_column = {t.column: t for t in theirs[0]}
    worst = 0.0
    for t in ours[0]:
        e = by_column.get(t.column)
        if e is None:
            problems.append(f"{t.column}: not in Evidently's result")
            continue
        worst = max(worst, abs(t.score - e.score))
        if (t.stattest, t.drifted) != (e.stattest, e.drifted) or abs(t.score - e.score) > TOLERANCE:
            problems.append(f"{t.column}: {t.stattest} {t.score} {t.drifted} vs {e.stattest} {e.score} {e.drifted}")
    if abs(ours[1] - theirs[1]) > 1e-12 or ours[2] != theirs[2]:
        problems.append(f"dataset: {ours[1]} {ours[2]} vs {theirs[1]} {theirs[2]}")
    worst_ks = max(abs(t.score - p) for t, p in zip(ours_ks[0], scipy_p, strict=True))
    if worst_ks > TOLERANCE:
        problems.append(f"KS p-values differ from scipy's by up to {worst_ks}")
    return {"ok": not problems, "problems": problems, "max_score_diff_vs_evidently": worst,
            "max_ks_pvalue_diff_vs_scipy": worst_ks, "columns_drifted": sum(t.drifted for t in ours[0]),
            "columns": len(ours[0])}


def show(result: dict[str, Any]) -> None:
    p, med, ratios = result["params"], result["median_s"], result["ratios"]
    out = Console()
    table = Table(title=f"drift: {p['rows']:,} reference rows vs {p['rows']:,} window rows x {p['cols']} numeric "
                        f"columns ({p['shifted']} shifted), median of {p['repeat']}")
    for col in ("system", "what", "seconds", "vs Loopline"):
        table.add_column(col, justify="left" if col in ("system", "what") else "right")
    table.add_row("Loopline drift_arrays", "default tests, scores, decisions", f"{med['loopline']:.3f}", "1.0x")
    table.add_row("Evidently DataDriftPreset", "the same, and its plots", f"{med['evidently']:.3f}",
                  f"{ratios['evidently_over_loopline']:.1f}x slower")
    table.add_row("Loopline drift_arrays (ks)", "KS p-value per column", f"{med['loopline_ks']:.3f}", "")
    table.add_row("scipy ks_2samp per column", "KS p-value per column", f"{med['scipy_ks_2samp']:.3f}",
                  f"{ratios['scipy_ks_over_loopline_ks']:.1f}x the Loopline KS")
    out.print(table)
    parity = result["parity"]
    verdict = "[green]equal[/]" if parity["ok"] else "[red]DIFFERENT[/]"
    out.print(f"statistics vs Evidently: {verdict} (tests and decisions per column, dataset share "
              f"{result['dataset']['share']:.2f} -> drift {result['dataset']['drifted']}; largest score difference "
              f"{parity['max_score_diff_vs_evidently']:.1e}); KS p-values vs scipy: largest difference "
              f"{parity['max_ks_pvalue_diff_vs_scipy']:.1e}; {parity['columns_drifted']}/{parity['columns']} "
              "columns drifted")
    targets = Table(title="targets (issue 10)")
    for col in ("target", "measured", "met"):
        targets.add_column(col)
    targets.add_row("Loopline <= 0.5 s", f"{med['loopline']:.3f} s", _yes(med["loopline"] <= 0.5))
    targets.add_row(">= 10x faster than Evidently", f"{ratios['evidently_over_loopline']:.1f}x",
                    _yes(ratios["evidently_over_loopline"] >= 10))
    targets.add_row("equal statistics", "to 1e-6, same decisions" if parity["ok"] else "no", _yes(parity["ok"]))
    out.print(targets)
    print_context(out, result)


def _yes(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench drift", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the reference and in the window")
    parser.add_argument("--cols", type=int, default=20, help="numeric columns (default 20)")
    parser.add_argument("--shifted", type=int, default=5, help="columns that move in the window (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side; the median counts (default 3)")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    cli("drift", parse_args(argv), run, show, console)


if __name__ == "__main__":
    main()
