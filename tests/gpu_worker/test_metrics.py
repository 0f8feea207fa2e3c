"""A GPU worker's own Prometheus figures (gpu_worker/metrics.py), read from its registry."""

from __future__ import annotations

from prometheus_client import REGISTRY

from gpu_worker import metrics
from sdsaas.contract import RunOutcome


def runs(outcome: str) -> float:
    return REGISTRY.get_sample_value("sdsaas_worker_jobs_total", {"outcome": outcome}) or 0.0


def test_runs_are_counted_by_outcome_those_whose_task_raised_too() -> None:
    before = {name: runs(name) for name in ("succeeded", "failed", "handed_back")}
    # when a batch of two ends (one succeeded, one failed), then a batch of three raises a
    # transient error (handed back), and a job alone raises a bug (failed as internal_error)
    metrics.count([RunOutcome.SUCCEEDED, RunOutcome.FAILED])
    metrics.count_raised(3, transient=True)
    metrics.count_raised(1, transient=False)
    # then each run is counted once, under how it ended
    after = {name: runs(name) - before[name] for name in before}
    assert after == {"succeeded": 1, "failed": 2, "handed_back": 3}
