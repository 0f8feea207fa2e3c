"""The job object as the API writes it (`JobSerializer.to_representation`, built at once for the
poll's sake) is what DRF makes of the serializer's declared fields, the ones the schema
describes, in every state a job can be in; and the poll reads it in two statements."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework import serializers

from jobs.models import Job
from jobs.selectors import job_get
from jobs.serializers import JobSerializer
from tests.support.factories import DiffusionModelFactory, JobFactory, api_client_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("local_aws")]  # presigned outputs

NOW = dt.datetime(2026, 11, 29, 12, 30, 5, 123456, tzinfo=dt.UTC)

STATES: dict[str, dict[str, Any]] = {
    "queued": {"status": Job.Status.QUEUED},
    "starting": {"status": Job.Status.STARTING, "attempt": 1},
    "processing": {
        "status": Job.Status.PROCESSING,
        "attempt": 2,
        "started_at": NOW,
        "progress_step": 3,
        "progress_total": 20,
    },
    "succeeded": {
        "status": Job.Status.SUCCEEDED,
        "attempt": 1,
        "started_at": NOW,
        "completed_at": NOW + dt.timedelta(seconds=2),
        "output_keys": ["outputs/t/job/0.png", "outputs/t/job/1.png"],
        "metrics": {"load_s": 0.5, "inference_s": 1.25},
        "webhook_url": "https://hooks.example.com/sd",
        "webhook_events": ["completed", "progress"],
    },
    "failed": {
        "status": Job.Status.FAILED,
        "completed_at": NOW,
        "error_code": "worker_lost",
        "error_message": "The worker stopped.",
    },
    "from discord": {
        "status": Job.Status.CANCELED,
        "origin": {"type": "discord", "guild_id": "1", "channel_id": "2", "user_id": "3"},
    },
}


def unsigned(representation: dict[str, Any]) -> dict[str, Any]:
    """The object with its output URLs' signatures cut (they carry the second they were made)."""
    output = representation["output"]
    return {**representation, "output": output and [url.split("?")[0] for url in output]}


def drf_representation(job: Job) -> dict[str, Any]:
    """What DRF's ModelSerializer makes of JobSerializer's fields, field by field."""
    return unsigned(serializers.ModelSerializer.to_representation(JobSerializer(job), job))


@pytest.mark.parametrize("state", list(STATES))
def test_the_job_object_is_drf_s_own_representation_of_its_declared_fields(state: str) -> None:
    job = JobFactory(created_at=timezone.now(), **STATES[state])
    for read in (Job.objects.get(pk=job.pk), job_get(tenant=job.tenant, public_id=job.public_id)):
        built = unsigned(JobSerializer(read).data)
        assert built == drf_representation(read)
        assert list(built) == list(drf_representation(read))  # the same order of keys


def test_a_poll_costs_the_key_lookup_and_one_select_of_the_job_with_its_model_slug() -> None:
    model = DiffusionModelFactory(slug="sd15")
    job = JobFactory(model=model, status=Job.Status.STARTING)
    client = api_client_for(job.tenant)
    assert client.get(f"/v1/jobs/{job.public_id}").status_code == 200  # the key's first use
    with CaptureQueriesContext(connection) as queries:
        answer = client.get(f"/v1/jobs/{job.public_id}")
    assert answer.status_code == 200 and answer.json()["model"] == "sd15"
    assert len(queries) == 2, [query["sql"] for query in queries]
