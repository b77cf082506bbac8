"""`make bench` / `python -m bench [name ...] [options]`: run the named benchmarks (default: all).

Each benchmark measures Loopline against a peer in the same run and reports the ratio. Options
after the names go to each named benchmark (``python -m bench pipeline --events 5000``).
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks() -> dict[str, str]:
    """Benchmark name -> module with ``main()``; imported only when that benchmark runs."""
    found = {"pipeline": "bench.pipeline", "features": "bench.feature_online", "validator": "bench.validator",
             "serving": "bench.serving", "drift": "bench.drift",
             "monitor": "bench.monitor", "llm": "bench.llm"}
    if (HERE / "broker_modes.py").is_file():
        found["broker"] = "bench.broker_modes"
    return found


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    known = benchmarks()
    names = []
    while args and not args[0].startswith("-"):
        names.append(args.pop(0))
    if not names and args and args[0] in {"-h", "--help"}:
        print("usage: python -m bench [name ...] [options]  (no name: every benchmark)")
        print(f"benchmarks: {', '.join(known)}; `python -m bench NAME --help` for a benchmark's options")
        return 0
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    failed = []
    for name in names or list(known):
        module = importlib.import_module(known[name])
        sys.argv = [f"python -m bench {name}", *args]
        try:
            module.main()
        except SystemExit as exc:
            if exc.code not in (0, None):
                failed.append(name)
        except Exception:  # noqa: BLE001 - report it and go on with the next benchmark
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
