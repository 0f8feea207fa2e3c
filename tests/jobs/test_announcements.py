"""Each job state change a client can see is announced once, inside its transaction."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.announcements import JobStateChange
from jobs.models import Job
from jobs.services import lifecycle
from tests.support.factories import PlanFactory, TenantFactory, api_client_for

pytestmark = [
    pytest.mark.usefixtures("local_aws", "model"),
    pytest.mark.django_db(transaction=True),
]

HEARD: list[JobStateChange] = []


def record(change: JobStateChange) -> None:
    HEARD.append(change)


def refuse(change: JobStateChange) -> None:
    raise RuntimeError("the subscriber's outbox is unavailable")


@pytest.fixture
def subscribed(settings: Any) -> list[JobStateChange]:
    settings.JOB_STATE_SUBSCRIBERS = [f"{__name__}.record"]
    HEARD.clear()
    return HEARD


def submit() -> Job:
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=5))
    body = {"model": "tiny", "prompt": "a fox"}
    response = api_client_for(tenant).post("/v1/jobs", body, format="json")
    return Job.objects.get(public_id=response.json()["id"])


def succeed(job: Job, attempt: int = 1) -> None:
    lifecycle.job_mark_received(job_public_id=job.public_id, attempt=attempt)
    lifecycle.job_mark_started(job_public_id=job.public_id, attempt=attempt, load_s=0.1)
    keys = [f"tenants/{job.tenant_id}/jobs/{job.public_id}/0.png"]
    lifecycle.job_mark_succeeded(
        job_public_id=job.public_id, attempt=attempt, output_keys=keys, metrics={}
    )


def test_processing_and_succeeded_are_announced_once_whatever_the_duplicates(
    subscribed: list[JobStateChange],
) -> None:
    # given a job that runs to success, every event delivered twice
    job = submit()
    succeed(job)
    succeed(job)
    # then the subscriber heard processing, then succeeded, once each, about this job
    assert [(c.job_id, c.status, c.attempt) for c in subscribed] == [
        (job.public_id, "processing", 1),
        (job.public_id, "succeeded", 1),
    ]
    assert subscribed[0].tenant_id == job.tenant_id and subscribed[0].job_pk == job.pk


def test_a_cancel_and_a_failure_are_announced(subscribed: list[JobStateChange]) -> None:
    canceled, failed = submit(), submit()
    lifecycle.job_cancel(tenant=canceled.tenant, job_public_id=canceled.public_id)
    lifecycle.job_cancel(tenant=canceled.tenant, job_public_id=canceled.public_id)
    lifecycle.job_mark_failed(
        job_public_id=failed.public_id, attempt=1, code=lifecycle.FailureCode.TIMEOUT, message="x"
    )
    assert [(c.job_id, c.status) for c in subscribed] == [
        (canceled.public_id, "canceled"),
        (failed.public_id, "failed"),
    ]


def test_a_late_event_of_an_older_attempt_announces_nothing(
    subscribed: list[JobStateChange],
) -> None:
    job = submit()
    succeed(job, attempt=2)
    heard = len(subscribed)
    lifecycle.job_mark_started(job_public_id=job.public_id, attempt=1, load_s=0.1)
    lifecycle.job_mark_failed(
        job_public_id=job.public_id, attempt=1, code=lifecycle.FailureCode.TIMEOUT, message="x"
    )
    assert len(subscribed) == heard


def test_a_subscriber_that_fails_rolls_the_change_back(settings: Any) -> None:
    # given a subscriber that cannot write its outbox
    job = submit()
    lifecycle.job_mark_received(job_public_id=job.public_id, attempt=1)
    settings.JOB_STATE_SUBSCRIBERS = [f"{__name__}.refuse"]
    # when the job's start is applied, then it fails, and the job is as before
    with pytest.raises(RuntimeError):
        lifecycle.job_mark_started(job_public_id=job.public_id, attempt=1, load_s=0.1)
    job.refresh_from_db()
    assert job.status == Job.Status.STARTING
