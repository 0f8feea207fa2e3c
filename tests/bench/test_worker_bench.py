"""`python -m bench.worker` at its smallest: a smoke test of the harness, not a benchmark.

It starts the whole local stack, runs a backlog of 2 jobs (3 sent) once against the baseline loop
and sends 2 jobs to the idle worker; only the shape of the last line is asserted (it parses, it
has the figures and their inputs, they are positive numbers, the gap at least 0). No figure is
compared with its goal: on a busy 2-core machine the figures say nothing, and a timed assertion
would be flaky.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.bench import bench_result

ROOT = Path(__file__).resolve().parents[2]

FIGURES = (
    "backlog_ratio",
    "idle_queue_ms_p95",
    "sdsaas_images_per_s",
    "baseline_images_per_s",
    "jobs",
    "repeats",
    "cores",
)


@pytest.mark.bench_smoke
def test_worker_bench_runs_end_to_end_and_prints_its_json_line_last() -> None:
    # Given the benchmark at its smallest, on a SQLite file of its own (not the session's database)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    # (batches of at most 2: a backlog of 3 then always runs as 2 tasks or more, with a gap
    # between them to measure; with the default of 8 it could run as one batch, which the
    # harness refuses)
    argv = ["-m", "bench.worker", "--quick", "--jobs", "2", "--repeats", "1", "--idle-jobs", "2"]
    argv += ["--max-batch", "2"]

    # When it runs, then it succeeds, its last line the JSON object, every figure positive
    result = bench_result(argv, env, FIGURES)
    # (the gap may be 0: the worker's log stamps milliseconds, and the next job may start within
    # the one the task before it ended in)
    assert isinstance(result["gap_ms_p50"], int | float) and result["gap_ms_p50"] >= 0
    assert (result["jobs"], result["repeats"], result["idle_jobs"]) == (2, 1, 2)
    assert len(result["ratio_per_repeat"]) == 1
    # and every job ran on its first receive: the next message taken ahead under the backlog
    # (sdsaas/broker/transport.py) was delivered, not handed back and received again
    assert result["extra_receives"] == 0
