"""Jobs canceled on GPU workers: while queued (never run), while running, and in the middle of
a step of seconds; the worker lets go within a bound and takes the next job.

Real processes: the control worker of the session and a GPU worker of the test's own (the
`pool` of tests/e2e/conftest.py).
"""

from __future__ import annotations

import re
import time

import pytest

from jobs.models import Job
from tests.e2e.conftest import (
    LONG_JOB,
    LONG_STEP_JOB,
    SHORT_JOB,
    STOP_MARGIN_S,
    Pool,
    finished,
    log_time,
    wait_for,
)
from tests.support.api import credits

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_prefix")]


def test_cancel_while_queued_never_runs_and_cancel_while_running_stops_within_2s(
    pool: Pool,
) -> None:
    # given a tenant with one slot: a long job running and a second one queued behind it
    pool.tenant.plan.max_concurrent_jobs = 1
    pool.tenant.plan.save()
    pool.start_worker()
    running = pool.submit(**LONG_JOB)
    queued = pool.submit(**SHORT_JOB)
    assert pool.job(queued).status == Job.Status.QUEUED
    # when the queued job is canceled
    assert pool.client.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "canceled"
    # and the running one is canceled a second into its denoising
    pool.wait_processing(running)
    time.sleep(1)
    canceled_at = time.time()
    response = pool.client.post(f"/v1/jobs/{running}/cancel")
    # then both are canceled, their credits released
    assert response.json().get("status") == "canceled", response.json()
    stopped = wait_for(
        lambda: re.search(f"job {running} canceled during inference", pool.log()),
        10,
        "the worker to stop the canceled job",
    )
    assert stopped
    assert log_time(pool.log(), f"job {running} canceled during inference") - canceled_at < 2.0
    assert credits(pool.tenant) == (0, 0)
    # and the queued one never reached a worker
    assert queued not in pool.log()
    assert list(pool.job(queued).events.values_list("kind", flat=True)) == [
        "created",
        "canceled",
    ]


def test_cancel_during_a_step_of_seconds_takes_effect_within_a_bound(pool: Pool) -> None:
    # given a worker in the first of its job's steps of several seconds
    pool.start_worker()
    job_id = pool.submit(**LONG_STEP_JOB)
    pool.wait_processing(job_id)
    # when the job is canceled
    canceled_at = time.time()
    assert pool.client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"
    # then the worker lets go of it within the stated margin, not at the end of the step
    wait_for(lambda: f"job {job_id} abandoned" in pool.log(), 30, "the job to be abandoned")
    assert log_time(pool.log(), rf"job {job_id} abandoned \(canceled\)") - canceled_at < (
        STOP_MARGIN_S
    )
    # and it starts again for the next job
    assert finished(pool.client, pool.submit(**SHORT_JOB))["status"] == "succeeded"
