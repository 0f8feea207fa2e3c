from __future__ import annotations

import pytest

from jobs.models import Job, JobEvent
from jobs.services.lifecycle import (
    job_cancel,
    job_mark_failed,
    job_mark_progress,
    job_mark_received,
    job_mark_started,
    job_mark_succeeded,
)
from sdsaas.broker.sqs import model_queue_name
from sdsaas.errors import Conflict
from tenants.models import UsageRecord
from tests.support.api import credits, own_keys, submit_job
from tests.support.factories import (
    DiffusionModelFactory,
    PlanFactory,
    TenantFactory,
    api_client_for,
)

pytestmark = [pytest.mark.usefixtures("local_aws"), pytest.mark.django_db(transaction=True)]


@pytest.fixture
def setup():  # type: ignore[no-untyped-def]
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=1, monthly_credits=10))
    DiffusionModelFactory(slug="tiny")
    return tenant, api_client_for(tenant)


def test_success_meters_usage_once_even_when_the_event_is_duplicated(setup):  # type: ignore[no-untyped-def]
    tenant, client = setup
    job_id = submit_job(client, num_outputs=2)
    assert job_mark_started(job_public_id=job_id, attempt=1, load_s=0.5)
    keys = [f"tenants/{tenant.pk}/jobs/{job_id}/{i}.png" for i in range(2)]
    # when the finished event arrives twice
    first = job_mark_succeeded(job_public_id=job_id, attempt=1, output_keys=keys, metrics={})
    second = job_mark_succeeded(
        job_public_id=job_id, attempt=1, output_keys=own_keys(job_id), metrics={}
    )
    # then only the first changed anything
    assert (first, second) == (True, False)
    job = Job.objects.get(public_id=job_id)
    assert (job.status, job.output_keys) == ("succeeded", keys)
    assert UsageRecord.objects.filter(job=job).count() == 2
    assert credits(tenant) == (2, 0)


def test_final_states_never_change(setup):  # type: ignore[no-untyped-def]
    tenant, client = setup
    job_id = submit_job(client)
    job_mark_succeeded(job_public_id=job_id, attempt=1, output_keys=own_keys(job_id), metrics={})
    events = JobEvent.objects.count()
    assert not job_mark_failed(job_public_id=job_id, attempt=1, code="oom", message="boom")
    assert not job_mark_started(job_public_id=job_id, attempt=2, load_s=1.0)
    assert not job_mark_progress(job_public_id=job_id, attempt=1, step=3, total=20)
    with pytest.raises(Conflict):
        job_cancel(tenant=tenant, job_public_id=job_id)
    job = Job.objects.get(public_id=job_id)
    assert (job.status, job.error_code, job.attempt) == ("succeeded", "", 1)
    assert JobEvent.objects.count() == events
    assert credits(tenant) == (1, 0)


def test_events_of_an_older_attempt_change_nothing(setup):  # type: ignore[no-untyped-def]
    _tenant, client = setup
    job_id = submit_job(client)
    # given the job was redelivered and attempt 2 has started
    assert job_mark_started(job_public_id=job_id, attempt=1, load_s=0.1)
    assert job_mark_started(job_public_id=job_id, attempt=2, load_s=0.1)
    # when the lost attempt 1 reports progress and failure late
    assert not job_mark_progress(job_public_id=job_id, attempt=1, step=5, total=20)
    assert not job_mark_failed(job_public_id=job_id, attempt=1, code="oom", message="x")
    assert not job_mark_started(job_public_id=job_id, attempt=1, load_s=0.1)
    # then the job is still attempt 2, processing
    job = Job.objects.get(public_id=job_id)
    assert (job.status, job.attempt, job.progress_step) == ("processing", 2, 0)
    assert job_mark_progress(job_public_id=job_id, attempt=2, step=5, total=20)
    assert Job.objects.get(public_id=job_id).progress_step == 5


def test_failure_releases_credits_and_admits_the_next_job(setup, local_aws):  # type: ignore[no-untyped-def]
    tenant, client = setup
    first, second = submit_job(client, num_outputs=3), submit_job(client)
    assert Job.objects.get(public_id=second).status == "queued"
    assert credits(tenant) == (0, 4)
    job_mark_failed(job_public_id=first, attempt=1, code="out_of_memory", message="CUDA OOM")
    failed = client.get(f"/v1/jobs/{first}").json()
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "out_of_memory", "message": "CUDA OOM"}
    assert credits(tenant) == (0, 1)
    assert Job.objects.get(public_id=second).status == "starting"
    published = local_aws.drain_tasks(model_queue_name("tiny"))
    assert [t["kwargs"]["job"]["job_id"] for t in published] == [first, second]


def test_cancel_while_queued_releases_credits_and_never_publishes(setup, local_aws):  # type: ignore[no-untyped-def]
    tenant, client = setup
    running, waiting = submit_job(client), submit_job(client, num_outputs=2)
    response = client.post(f"/v1/jobs/{waiting}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    assert credits(tenant) == (0, 1)
    # canceling again changes nothing; the running job finishing admits nobody
    assert client.post(f"/v1/jobs/{waiting}/cancel").json()["status"] == "canceled"
    job_mark_succeeded(job_public_id=running, attempt=1, output_keys=own_keys(running), metrics={})
    published = local_aws.drain_tasks(model_queue_name("tiny"))
    assert [t["kwargs"]["job"]["job_id"] for t in published] == [running]


def test_cancel_of_a_running_job_frees_its_slot(setup, local_aws):  # type: ignore[no-untyped-def]
    tenant, client = setup
    running, waiting = submit_job(client), submit_job(client)
    job_mark_started(job_public_id=running, attempt=1, load_s=0.2)
    assert client.post(f"/v1/jobs/{running}/cancel").json()["status"] == "canceled"
    assert Job.objects.get(public_id=waiting).status == "starting"
    assert credits(tenant) == (0, 1)
    # a late success from the worker of the canceled job is ignored
    assert not job_mark_succeeded(
        job_public_id=running, attempt=1, output_keys=own_keys(running), metrics={}
    )
    assert UsageRecord.objects.count() == 0


def test_cancel_of_a_finished_job_is_409(setup):  # type: ignore[no-untyped-def]
    _tenant, client = setup
    job_id = submit_job(client)
    job_mark_succeeded(job_public_id=job_id, attempt=1, output_keys=own_keys(job_id), metrics={})
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def history(job_id: str) -> list[tuple[str, int]]:
    return list(
        JobEvent.objects.filter(job__public_id=job_id).values_list("kind", "attempt").order_by("id")
    )


def test_each_delivery_is_an_event_even_one_that_died_before_loading_the_model(setup):  # type: ignore[no-untyped-def]
    _tenant, client = setup
    job_id = submit_job(client)
    # given attempt 1 received and started, whose worker then died
    assert job_mark_received(job_public_id=job_id, attempt=1)
    assert job_mark_started(job_public_id=job_id, attempt=1, load_s=0.1)
    job_mark_progress(job_public_id=job_id, attempt=1, step=3, total=20)
    # when the message is delivered again (attempt 2), and that worker dies while loading the model
    assert job_mark_received(job_public_id=job_id, attempt=2)
    # then the job is starting again as attempt 2, its progress reset
    job = Job.objects.get(public_id=job_id)
    assert (job.status, job.attempt, job.progress_step) == ("starting", 2, 0)
    # and when attempt 3 is received and started, every delivery is in its history
    assert job_mark_received(job_public_id=job_id, attempt=3)
    assert job_mark_started(job_public_id=job_id, attempt=3, load_s=0.1)
    assert history(job_id) == [
        ("created", 0),
        ("admitted", 1),
        ("received", 1),
        ("started", 1),
        ("received", 2),
        ("received", 3),
        ("started", 3),
    ]
    assert Job.objects.get(public_id=job_id).attempt == 3


def test_duplicate_and_old_received_events_change_nothing(setup):  # type: ignore[no-untyped-def]
    _tenant, client = setup
    job_id = submit_job(client)
    assert job_mark_received(job_public_id=job_id, attempt=1)
    assert job_mark_received(job_public_id=job_id, attempt=2)
    assert job_mark_started(job_public_id=job_id, attempt=2, load_s=0.1)
    before = history(job_id)
    # when attempt 2's event arrives again, and attempt 1's arrives late
    assert not job_mark_received(job_public_id=job_id, attempt=2)
    assert not job_mark_received(job_public_id=job_id, attempt=1)
    # then the job is still processing attempt 2, with the same history
    job = Job.objects.get(public_id=job_id)
    assert (job.status, job.attempt) == ("processing", 2)
    assert history(job_id) == before
    # and a delivery of a finished job changes nothing either
    job_mark_succeeded(job_public_id=job_id, attempt=2, output_keys=own_keys(job_id), metrics={})
    assert not job_mark_received(job_public_id=job_id, attempt=3)
    job = Job.objects.get(public_id=job_id)
    assert (job.status, job.attempt) == ("succeeded", 2)


def test_only_the_jobs_own_images_are_recorded_and_metered(setup):  # type: ignore[no-untyped-def]
    tenant, client = setup
    job_id = submit_job(client, num_outputs=2)
    other_id = submit_job(client)
    mine = own_keys(job_id, 3)
    # when a worker reports more images than the job asked for, one twice, and another job's
    reported = [mine[0], mine[0], own_keys(other_id)[0], mine[1], mine[2]]
    assert job_mark_succeeded(job_public_id=job_id, attempt=1, output_keys=reported, metrics={})
    # then the job keeps its own first two, and two images are metered
    job = Job.objects.get(public_id=job_id)
    assert job.output_keys == mine[:2]
    assert UsageRecord.objects.filter(job=job).count() == 2
    assert credits(tenant) == (2, 1)


def test_a_success_with_no_image_of_the_job_fails_it(setup):  # type: ignore[no-untyped-def]
    tenant, client = setup
    job_id, other_id = submit_job(client), submit_job(client)
    assert job_mark_succeeded(
        job_public_id=job_id, attempt=1, output_keys=own_keys(other_id), metrics={}
    )
    job = Job.objects.get(public_id=job_id)
    assert (job.status, job.error_code, job.output_keys) == ("failed", "internal_error", [])
    assert not UsageRecord.objects.filter(job=job).exists()
    assert credits(tenant) == (0, 1)
