"""`python -m bench.cpu` (`make bench`): the CPU set of benchmarks in turn, and one verdict.

Runs `bench.worker` and `bench.api` (each in `--quick` mode unless `--full`) as the user would,
their output shown as it comes, and takes each one's last line (its JSON object). Then a table
of the six figures of issue 14 against their goals, and one JSON line last: the figures at the
top level, each benchmark's own object under its name, `goals` and `goals_met`. A benchmark
that fails stops the set (exit status 1); the figures missing their goals do not (the verdict is
in the JSON: `goals_met`).
"""

from __future__ import annotations

import argparse
import json
import operator
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.api import GOALS as API_GOALS
from bench.worker import GOALS as WORKER_GOALS

BENCHMARKS = ("worker", "api")
# Figure -> (benchmark, how it meets its goal).
AT_LEAST, AT_MOST, BELOW = operator.ge, operator.le, operator.lt
FIGURES: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "backlog_ratio": ("worker", AT_LEAST),
    "gap_ms_p50": ("worker", AT_MOST),
    "idle_queue_ms_p95": ("worker", AT_MOST),
    "submit_ratio": ("api", AT_LEAST),
    "submit_p99_ms": ("api", BELOW),
    "poll_ratio": ("api", AT_LEAST),
}
GOALS = {**WORKER_GOALS, **API_GOALS}
SIGNS = {AT_LEAST: ">=", AT_MOST: "<=", BELOW: "<"}


def run(name: str, *, full: bool) -> dict[str, Any]:
    """Run `python -m bench.<name>`, echoing its output; its last line's object."""
    argv = [sys.executable, "-m", f"bench.{name}", *([] if full else ["--quick"])]
    print(f"$ {' '.join(argv[1:])}", flush=True)
    last = ""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            last = line if line.strip() else last
    if process.returncode != 0:
        raise SystemExit(f"bench.{name} failed (exit status {process.returncode})")
    result: dict[str, Any] = json.loads(last)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="each benchmark's default mode")
    args = parser.parse_args()
    began = time.monotonic()
    results = {name: run(name, full=args.full) for name in BENCHMARKS}
    summary = summarize(results)
    summary.update(mode="full" if args.full else "quick", wall_s=round(time.monotonic() - began))
    print("\nthe CPU set (issue 14):")
    print(f"{'figure':<20} {'value':>10} {'goal':>10}  met")
    for name, (_, meets) in FIGURES.items():
        goal = f"{SIGNS[meets]} {GOALS[name]:g}"
        met = "yes" if summary["goals_met"][name] else "no"
        print(f"{name:<20} {summary[name]:>10} {goal:>10}  {met}")
    print(json.dumps(summary))
    return 0


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The six figures from the benchmarks' objects, their goals and verdicts, then the objects."""
    figures = {name: results[bench][name] for name, (bench, _) in FIGURES.items()}
    return {
        **figures,
        "goals": {name: GOALS[name] for name in FIGURES},
        "goals_met": {name: FIGURES[name][1](figures[name], GOALS[name]) for name in FIGURES},
        **results,
    }


if __name__ == "__main__":
    sys.exit(main())
