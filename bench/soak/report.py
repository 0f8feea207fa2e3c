"""The soak's verdict: a table of every metric and each tenant, the failures, and one JSON line
last (its keys are what a run is compared by: keep them)."""

from __future__ import annotations

import json
from typing import Any

from bench.soak.chaos import Result
from bench.soak.checks import Outcome, TenantRow, job_outcome, tenant_credits
from bench.soak.timings import Timings, measure
from bench.stats import percentile


def report(result: Result) -> bool:
    """Prints the table and the JSON line; True when nothing was lost or metered wrong."""
    outcome = job_outcome(result)
    tenant_rows, credit_mismatch = tenant_credits(result, outcome)
    summary = summarize(result, outcome, credit_mismatch, measure(result, outcome))
    print_tables(summary, tenant_rows, started=result.started)
    problems = find_problems(result, outcome, credit_mismatch)
    if problems:
        print()
        for problem in problems:
            print(f"FAIL {problem}")
    print(json.dumps(summary))
    return not problems and len(outcome.jobs) == result.args.jobs


def summarize(
    result: Result, outcome: Outcome, credit_mismatch: list[str], timings: Timings
) -> dict[str, Any]:
    """The metrics, in the order of the table and of the JSON line."""
    args, t = result.args, timings
    return {
        "jobs": len(outcome.jobs),
        "submit_errors": len(result.submit_errors),
        "succeeded": len(outcome.succeeded),
        "failed": sum(outcome.failed.values()),
        "lost": len(outcome.lost),
        "double_metered": len(outcome.double_metered),
        "unmetered": len(outcome.unmetered),
        "credit_mismatch_tenants": len(credit_mismatch),
        "images": sum(outcome.images.values()),
        "kills": len(result.kills),
        "extra_deliveries": t.extra_deliveries,
        "double_runs": t.double_runs,
        "recovery_p50_s": percentile(t.recovery, 50),
        "recovery_p90_s": percentile(t.recovery, 90),
        "recovery_max_s": percentile(t.recovery, 100),
        "redelivery_p50_s": percentile(t.redelivery, 50),
        "redelivery_max_s": percentile(t.redelivery, 100),
        "gpu_recovery_p50_s": percentile(t.gpu_recovery, 50),
        "gpu_recovery_max_s": percentile(t.gpu_recovery, 100),
        "event_lag_p50_s": percentile(t.event_lag, 50),
        "event_lag_max_s": percentile(t.event_lag, 100),
        "visibility_s": args.visibility,
        "job_work_p50_s": percentile(t.work_s, 50),
        "job_work_p90_s": percentile(t.work_s, 90),
        "worker_boot_p50_s": percentile(t.boot_s, 50),
        "jobs_per_min": t.jobs_per_min,
        "workers": args.workers,
        "tenants": args.tenants,
        "chaos_s": round(result.chaos_s, 1),
        "wall_s": round(result.wall_s, 1),
    }


def print_tables(summary: dict[str, Any], tenant_rows: list[TenantRow], *, started: float) -> None:
    print()
    print(f"{'metric':<28} value")
    print(f"{'-' * 28} {'-' * 12}")
    for name, value in summary.items():
        print(f"{name:<28} {value}")
    print()
    print(f"{'tenant':<32} {'jobs':>5} {'images':>6} {'used':>6} {'rsvd':>5} {'last done':>9}")
    for row in tenant_rows:
        done = f"+{row.last - started:.0f}s" if row.last else "-"
        print(
            f"{row.name:<32} {row.jobs:>5} {row.produced:>6} {row.used!s:>6}"
            f" {row.reserved!s:>5} {done:>9}"
        )


def find_problems(result: Result, outcome: Outcome, credit_mismatch: list[str]) -> list[str]:
    return [
        *(f"submit failed: {error}" for error in result.submit_errors[:5]),
        *(f"not final in time: {job.public_id} ({job.status})" for job in outcome.lost[:10]),
        *(f"ended {what}: {n} job(s)" for what, n in outcome.failed.items()),
        *(f"metered more than once: {public_id}" for public_id in outcome.double_metered[:10]),
        *(f"metered less than produced: {public_id}" for public_id in outcome.unmetered[:10]),
        *(f"credits do not add up: {tenant}" for tenant in credit_mismatch),
    ]
