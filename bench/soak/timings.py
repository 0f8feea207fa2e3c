"""How the service recovered, from the workers' logs and the jobs' completion times: the times
of each killed job from its SIGKILL, the control plane's lag, and the deliveries that no kill
explains."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from bench.soak.chaos import Result
from bench.soak.checks import Outcome
from bench.soak.workers import Run

# The worker's own clock for the attempt that succeeded: load, inference, encode, upload.
WORK_METRICS = ("load_s", "inference_s", "encode_s", "upload_s")


@dataclass
class Timings:
    """Seconds, one value per killed job (the first three) or per succeeded job."""

    recovery: list[float]  # SIGKILL to the job's `completed_at`
    redelivery: list[float]  # SIGKILL to the next delivery's start on a worker
    gpu_recovery: list[float]  # SIGKILL to the end of the run that finished it
    event_lag: list[float]  # the job's end on its worker to `completed_at`
    work_s: list[float]
    boot_s: list[float]  # start of a worker to ready, every start
    double_runs: int  # jobs that ran on two workers at once
    extra_deliveries: int  # attempt - 1 - kills of the job (or of its batch), summed
    jobs_per_min: float


def measure(result: Result, outcome: Outcome) -> Timings:
    runs_of = runs_by_job(result.slots[0].runs)  # the slots share one list of runs
    recovery, redelivery, gpu_recovery = kill_recoveries(result, outcome, runs_of)
    succeeded = outcome.succeeded
    return Timings(
        recovery=recovery,
        redelivery=redelivery,
        gpu_recovery=gpu_recovery,
        event_lag=event_lags(succeeded, runs_of),
        work_s=[
            sum(float(job.metrics.get(k, 0)) for k in WORK_METRICS)
            for job in succeeded
            if "inference_s" in job.metrics
        ],
        boot_s=[s for slot in result.slots for s in slot.boot_s],
        double_runs=count_double_runs(runs_of),
        extra_deliveries=extra_deliveries(result, outcome),
        jobs_per_min=jobs_per_minute(succeeded, started=result.started),
    )


def runs_by_job(runs: list[Run]) -> dict[str, list[Run]]:
    runs_of: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        runs_of[run.job].append(run)
    return runs_of


def kill_recoveries(
    result: Result, outcome: Outcome, runs_of: dict[str, list[Run]]
) -> tuple[list[float], list[float], list[float]]:
    """recovery, redelivery and gpu_recovery: from each SIGKILL, as far as the job got."""
    from jobs.models import Job

    recovery, redelivery, gpu_recovery = [], [], []
    for kill in result.kills:
        job = outcome.jobs[kill.run.job]
        if job.status == Job.Status.SUCCEEDED and job.completed_at:
            recovery.append(job.completed_at.timestamp() - kill.at)
        later = [run for run in runs_of[job.public_id] if run.attempt > kill.run.attempt]
        if later:
            redelivery.append(min(run.start for run in later) - kill.at)
        ends = [run.end for run in later if run.end is not None]
        if ends:
            gpu_recovery.append(max(ends) - kill.at)
    return recovery, redelivery, gpu_recovery


def event_lags(succeeded: list[Any], runs_of: dict[str, list[Run]]) -> list[float]:
    event_lag = []
    for job in succeeded:
        ends = [run.end for run in runs_of[job.public_id] if run.end is not None]
        if ends and job.completed_at:
            event_lag.append(job.completed_at.timestamp() - max(ends))
    return event_lag


def count_double_runs(runs_of: dict[str, list[Run]]) -> int:
    """Jobs with a run that started before the one before it ended (or was killed)."""
    double_runs = 0
    for runs in runs_of.values():
        ordered = sorted(runs, key=lambda run: run.start)
        for before, after in itertools.pairwise(ordered):
            gone = before.end or before.killed_at or float("inf")
            if after.start < gone:
                double_runs += 1
                break
    return double_runs


def extra_deliveries(result: Result, outcome: Outcome) -> int:
    kills_of = Counter(job for kill in result.kills for job in (kill.run.job, *kill.run.batch))
    return sum(max(0, job.attempt - 1 - kills_of[job.public_id]) for job in outcome.jobs.values())


def jobs_per_minute(succeeded: list[Any], *, started: float) -> float:
    """Succeeded jobs per minute, from the first submit to the last completion."""
    completions = [job.completed_at.timestamp() for job in succeeded if job.completed_at]
    minutes = (max(completions) - started) / 60 if completions else 0.0
    return round(len(succeeded) / minutes, 1) if minutes else 0.0
