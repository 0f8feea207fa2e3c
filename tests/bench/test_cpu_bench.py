"""`make bench`'s verdict (bench/cpu.py): the six figures of issue 14 taken from the benchmarks'
objects, each judged against its goal the way the goal is stated (>=, <=, <)."""

from __future__ import annotations

from typing import Any

from bench.cpu import summarize


def results(**figures: float) -> dict[str, dict[str, Any]]:
    worker = {"backlog_ratio": 0.95, "gap_ms_p50": 12.0, "idle_queue_ms_p95": 40.0, "jobs": 32}
    api = {"submit_ratio": 0.7, "submit_p99_ms": 80.0, "poll_ratio": 0.9, "requests": 200}
    for name, value in figures.items():
        (worker if name in worker else api)[name] = value
    return {"worker": worker, "api": api}


def test_the_six_figures_come_first_with_their_goals_and_each_benchmarks_object_follows() -> None:
    # When the benchmarks' objects are summarized
    summary = summarize(results())

    # Then the six figures are at the top level, all met, and each object is kept whole
    assert list(summary)[:6] == [
        "backlog_ratio",
        "gap_ms_p50",
        "idle_queue_ms_p95",
        "submit_ratio",
        "submit_p99_ms",
        "poll_ratio",
    ]
    assert summary["goals"] == {
        "backlog_ratio": 0.9,
        "gap_ms_p50": 20.0,
        "idle_queue_ms_p95": 100.0,
        "submit_ratio": 0.6,
        "submit_p99_ms": 100.0,
        "poll_ratio": 0.85,
    }
    assert all(summary["goals_met"].values())
    assert summary["worker"]["jobs"] == 32 and summary["api"]["requests"] == 200


def test_each_goal_is_judged_by_its_own_comparison_at_its_bound() -> None:
    # At the bound: >= and <= are met, the p99's strict < is not
    at_bounds = results(
        backlog_ratio=0.9,
        gap_ms_p50=20.0,
        idle_queue_ms_p95=100.0,
        submit_ratio=0.6,
        submit_p99_ms=100.0,
        poll_ratio=0.85,
    )
    assert summarize(at_bounds)["goals_met"] == {
        "backlog_ratio": True,
        "gap_ms_p50": True,
        "idle_queue_ms_p95": True,
        "submit_ratio": True,
        "submit_p99_ms": False,
        "poll_ratio": True,
    }
    # Past each bound on the wrong side, each is missed
    missed = results(
        backlog_ratio=0.2,
        gap_ms_p50=73.0,
        idle_queue_ms_p95=101.0,
        submit_ratio=0.11,
        submit_p99_ms=444.0,
        poll_ratio=0.7,
    )
    assert not any(summarize(missed)["goals_met"].values())
