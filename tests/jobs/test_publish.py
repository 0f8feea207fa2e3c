from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from jobs.models import Job
from jobs.services import dispatch
from jobs.services.lifecycle import job_mark_succeeded
from jobs.tasks import sweep_unpublished
from sdsaas.broker.sqs import ensure_model_queue, model_queue_name
from tests.conftest import requires_postgres
from tests.support.api import own_keys
from tests.support.factories import (
    DiffusionModelFactory,
    LoraFactory,
    PlanFactory,
    TenantFactory,
    api_client_for,
)

pytestmark = [pytest.mark.usefixtures("local_aws"), pytest.mark.django_db(transaction=True)]


def submit(client, model: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs", {"model": model, "prompt": "a tram"}, format="json")


def test_each_model_has_its_own_queue(local_aws):  # type: ignore[no-untyped-def]
    # given two models
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=10))
    DiffusionModelFactory(slug="alpha")
    DiffusionModelFactory(slug="beta", family="sdxl")
    client = api_client_for(tenant)
    # when jobs for both are submitted
    alpha = [submit(client, "alpha").json()["id"] for _ in range(2)]
    beta = [submit(client, "beta").json()["id"]]
    # then each queue holds exactly its own model's jobs, with what a GPU worker needs
    alpha_tasks = local_aws.drain_tasks(model_queue_name("alpha"))
    beta_tasks = local_aws.drain_tasks(model_queue_name("beta"))
    assert sorted(t["kwargs"]["job"]["job_id"] for t in alpha_tasks) == sorted(alpha)
    assert [t["kwargs"]["job"]["job_id"] for t in beta_tasks] == beta
    message = beta_tasks[0]["kwargs"]["job"]
    assert message["model"] == {
        "slug": "beta",
        "family": "sdxl",
        "source_uri": "s3://sdsaas-models/beta/",
        "revision": "r1",
        "sha256": "",
    }
    assert message["attempt"] == 1
    assert message["output_prefix"] == f"tenants/{tenant.pk}/jobs/{beta[0]}/"
    assert isinstance(message["input"]["seed"], int)
    # nothing secret travels to the GPU side
    flat = str(message)
    assert "sk_live_" not in flat and "key_hash" not in flat


def test_the_message_carries_a_time_limit_from_the_model_and_the_request(local_aws):  # type: ignore[no-untyped-def]
    # given a model allowing 100 s plus 0.5 s per step of one 512x512 image
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=10, max_pixels=1024 * 1024))
    DiffusionModelFactory(slug="timed", time_limit_base_s=100, time_limit_step_s=0.5, max_side=1024)
    client = api_client_for(tenant)
    # when a job of 20 steps, two 1024x512 images is submitted
    body = {"model": "timed", "prompt": "a tram", "steps": 20, "num_outputs": 2}
    response = client.post("/v1/jobs", {**body, "width": 1024, "height": 512}, format="json")
    assert response.status_code == 202, response.content
    # then its limit is the base plus 0.5 s x 20 steps x 2 images x 2 (twice the pixels)
    [task] = local_aws.drain_tasks(model_queue_name("timed"))
    assert task["kwargs"]["job"]["time_limit_s"] == 100 + 0.5 * 20 * 2 * 2


def test_the_job_s_trace_context_travels_in_its_message_s_attributes(local_aws, settings, tmp_path):  # type: ignore[no-untyped-def]
    # given traces recorded
    settings.OTEL_EXPORTER = f"file:{tmp_path / 'spans.jsonl'}"
    DiffusionModelFactory(slug="traced")
    # when a job is submitted
    job_id = submit(api_client_for(TenantFactory()), "traced").json()["id"]
    # then its message carries the job's traceparent as the SQS attribute, not in its body
    trace_parent = Job.objects.get(public_id=job_id).trace_parent
    assert trace_parent.startswith("00-"), trace_parent
    [task] = local_aws.drain_tasks(model_queue_name("traced"), attributes=True)
    attribute = {"DataType": "String", "StringValue": trace_parent}
    assert task["attributes"] == {"traceparent": attribute}
    assert trace_parent not in str(task["kwargs"])


def swept_tenant(local_aws, settings):  # type: ignore[no-untyped-def]
    """A tenant of two slots, free, whose jobs the sweeper publishes at once; its client and the
    model's queue, which exists (a first job created it while the endpoint was up)."""
    settings.SWEEP_UNPUBLISHED_AFTER = 0
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=2))
    DiffusionModelFactory(slug="tiny")
    client = api_client_for(tenant)
    queue = model_queue_name("tiny")
    submit(client, "tiny")
    assert len(local_aws.drain_tasks(queue)) == 1
    Job.objects.all().update(status="succeeded")
    return client, queue


def test_publish_failure_is_repaired_by_the_sweeper_exactly_once(local_aws, settings):  # type: ignore[no-untyped-def]
    client, queue = swept_tenant(local_aws, settings)
    # given the SQS endpoint is down
    local_aws.proxy.stop()
    try:
        # when three jobs are submitted
        started = time.monotonic()
        responses = [submit(client, "tiny") for _ in range(3)]
        elapsed = time.monotonic() - started
        # then the API still accepts them; two are admitted but unpublished, one waits
        assert [r.status_code for r in responses] == [202] * 3
        assert elapsed < 10, f"submits took {elapsed:.1f}s while the broker was down"
        ids = [r.json()["id"] for r in responses]
        assert Job.objects.filter(public_id__in=ids, published_at__isnull=True).count() == 3
    finally:
        local_aws.proxy.start()
    assert local_aws.drain_tasks(queue) == []
    # when the endpoint is back and the sweeper runs (twice)
    assert sweep_unpublished() == 2
    assert sweep_unpublished() == 0
    # then each admitted job is in the queue exactly once
    assert sorted(t["kwargs"]["job"]["job_id"] for t in local_aws.drain_tasks(queue)) == sorted(
        ids[:2]
    )
    # and when one finishes, the third is admitted and published right away
    job_mark_succeeded(job_public_id=ids[0], attempt=1, output_keys=own_keys(ids[0]), metrics={})
    assert [t["kwargs"]["job"]["job_id"] for t in local_aws.drain_tasks(queue)] == [ids[2]]


def left_to_the_sweeper(local_aws, *submits):  # type: ignore[no-untyped-def]
    """The public ids of jobs submitted (client, body) while the SQS endpoint is down: their
    publish failed."""
    local_aws.proxy.stop()
    try:
        responses = [client.post("/v1/jobs", body, format="json") for client, body in submits]
    finally:
        local_aws.proxy.start()
    assert [r.status_code for r in responses] == [202] * len(submits)
    return [r.json()["id"] for r in responses]


def test_a_queue_that_keeps_failing_holds_back_no_other_queue_s_jobs(local_aws, settings):  # type: ignore[no-untyped-def]
    # given queues managed by Terraform, and a model added to the catalog before its queue was
    settings.SWEEP_UNPUBLISHED_AFTER = 0
    DiffusionModelFactory(slug="tiny")
    DiffusionModelFactory(slug="fresh")
    ensure_model_queue("tiny")
    settings.SQS_MANAGE_QUEUES = False
    clients = [api_client_for(TenantFactory()) for _ in range(2)]
    # and a job of each left to the sweeper, the queueless model's first (the lower id)
    stuck, good = left_to_the_sweeper(
        local_aws,
        (clients[0], {"model": "fresh", "prompt": "a"}),
        (clients[1], {"model": "tiny", "prompt": "a"}),
    )
    # when the sweeper runs, then the other model's job is published, the first one waits
    assert sweep_unpublished() == 1
    [task] = local_aws.drain_tasks(model_queue_name("tiny"))
    assert task["kwargs"]["job"]["job_id"] == good
    assert Job.objects.get(public_id=stuck).published_at is None


def test_a_job_whose_message_cannot_be_made_holds_back_no_other_job(local_aws, settings, caplog):  # type: ignore[no-untyped-def]
    # given two jobs left to the sweeper, the first naming a LoRA since gone from the catalog
    settings.SWEEP_UNPUBLISHED_AFTER = 0
    DiffusionModelFactory(slug="tiny")
    lora = LoraFactory(slug="ink")
    clients = [api_client_for(TenantFactory()) for _ in range(2)]
    poison, good = left_to_the_sweeper(
        local_aws,
        (clients[0], {"model": "tiny", "prompt": "a", "loras": [{"slug": "ink"}]}),
        (clients[1], {"model": "tiny", "prompt": "a"}),
    )
    lora.delete()
    # when the sweeper runs, then the other job is published, the first logged and left
    assert sweep_unpublished() == 1
    [task] = local_aws.drain_tasks(model_queue_name("tiny"))
    assert task["kwargs"]["job"]["job_id"] == good
    assert Job.objects.get(public_id=poison).published_at is None
    assert f"the message of {poison} could not be made" in caplog.text


def test_the_background_publisher_publishes_admitted_jobs_off_the_requests_thread(  # type: ignore[no-untyped-def]
    local_aws, settings, monkeypatch
):
    # given publishing in the background (the deployed default), and a record of which thread
    # sends each task to SQS
    settings.PUBLISH_IN_BACKGROUND = True
    senders: list[str] = []
    send = dispatch._send_batch

    def recorded(tasks, **kwargs):  # type: ignore[no-untyped-def]
        senders.extend([threading.current_thread().name] * len(tasks))
        return send(tasks, **kwargs)

    monkeypatch.setattr(dispatch, "_send_batch", recorded)
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=3))
    DiffusionModelFactory(slug="tiny")
    client = api_client_for(tenant)
    # when three jobs are submitted
    ids = [submit(client, "tiny").json()["id"] for _ in range(3)]
    # then, once the publisher has caught up, each is in its queue once, sent by its thread
    publisher = dispatch.background_publisher()
    assert publisher.flush(timeout=30)
    publisher.stop(timeout=10)  # its database connection closed before the test database goes
    tasks = local_aws.drain_tasks(model_queue_name("tiny"))
    assert sorted(t["kwargs"]["job"]["job_id"] for t in tasks) == sorted(ids)
    assert senders == ["job-publisher"] * 3
    assert not Job.objects.filter(public_id__in=ids, published_at__isnull=True).exists()


@requires_postgres
def test_the_sweeper_holds_no_lock_while_sqs_answers(local_aws, settings, monkeypatch):  # type: ignore[no-untyped-def]
    # given an admitted job whose publish failed, and SQS that holds the sweeper's send
    settings.SWEEP_UNPUBLISHED_AFTER = 0
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=2))
    DiffusionModelFactory(slug="tiny")
    client = api_client_for(tenant)
    local_aws.proxy.stop()
    try:
        job_id = submit(client, "tiny").json()["id"]
    finally:
        local_aws.proxy.start()
    sending, answer = threading.Event(), threading.Event()
    send = dispatch._send_batch

    def held(tasks, **kwargs):  # type: ignore[no-untyped-def]
        sending.set()
        answer.wait(30)
        return send(tasks, **kwargs)

    monkeypatch.setattr(dispatch, "_send_batch", held)

    def sweep() -> None:
        try:
            sweep_unpublished()
        finally:
            connection.close()  # the thread's own

    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    try:
        assert sending.wait(30)
        # when the tenant cancels the job while the send waits (the cancel takes the tenant's
        # lock, then the job's row: every other write of the tenant would wait behind it)
        started = time.monotonic()
        canceled = client.post(f"/v1/jobs/{job_id}/cancel")
        waited = time.monotonic() - started
    finally:
        answer.set()
        sweeper.join(30)
    # then it did not wait for SQS
    assert canceled.status_code == 200, canceled.content
    assert waited < 5, f"the cancel waited {waited:.1f}s for the sweeper's send"


def test_what_the_sweeper_cannot_send_stays_unpublished_for_its_next_run(local_aws, settings):  # type: ignore[no-untyped-def]
    client, queue = swept_tenant(local_aws, settings)
    # given an admitted job, unpublished, and the endpoint still down when the sweeper runs
    local_aws.proxy.stop()
    try:
        job_id = submit(client, "tiny").json()["id"]
        assert sweep_unpublished() == 0
    finally:
        local_aws.proxy.start()
    # then it is unpublished still (not left claimed), and the next run sends it
    assert Job.objects.get(public_id=job_id).published_at is None
    assert sweep_unpublished() == 1
    assert [t["kwargs"]["job"]["job_id"] for t in local_aws.drain_tasks(queue)] == [job_id]
