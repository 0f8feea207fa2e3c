"""`python -m bench.api` at its smallest: a smoke test of the harness, not a benchmark.

It starts moto_server and both gunicorns (2 workers each) on a PostgreSQL database of its own on
DATABASE_URL's server (created and dropped by the benchmark), runs one round of 8 requests of
each side and figure from 4 clients after the warm-up, and profiles 2 submits; only the shape of
the last line is asserted (it parses, it has the figures and their inputs, they are positive
numbers). No figure is compared with its goal: on a busy 2-core machine a timed assertion would
be flaky.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.bench import bench_result

ROOT = Path(__file__).resolve().parents[2]

FIGURES = (
    "submit_ratio",
    "submit_rps",
    "submit_baseline_rps",
    "submit_p50_ms",
    "submit_p99_ms",
    "submit_baseline_p99_ms",
    "poll_ratio",
    "poll_rps",
    "poll_baseline_rps",
    "poll_p99_ms",
    "requests",
    "rounds",
    "clients",
    "workers",
    "cores",
)


@pytest.mark.bench_smoke
def test_api_bench_runs_end_to_end_and_prints_its_json_line_last() -> None:
    # Given PostgreSQL (the benchmark runs on nothing else) and a database name of the test's own
    url = os.environ.get("DATABASE_URL", "")
    if urlsplit(url).scheme not in {"postgres", "postgresql", "pgsql"}:
        pytest.skip("bench.api needs PostgreSQL: DATABASE_URL is not a postgres:// URL")
    own = urlsplit(url)._replace(path=f"/bench_api_smoke_{os.getpid()}").geturl()
    argv = ["-m", "bench.api", "--quick", "--requests", "8", "--rounds", "1", "--clients", "4"]
    argv += ["--workers", "2", "--profile-submits", "2"]

    # When it runs, then it succeeds, its last line the JSON object, every figure positive
    result = bench_result(argv, {**os.environ, "DATABASE_URL": own}, FIGURES)
    assert (result["requests"], result["rounds"], result["clients"]) == (8, 1, 4)
    assert len(result["submit_ratio_per_round"]) == len(result["poll_ratio_per_round"]) == 1
    assert result["profile"]["submits"] == 2 and result["profile"]["statements"] > 0
