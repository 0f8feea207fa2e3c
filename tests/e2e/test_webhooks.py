"""Webhooks with real processes: the GPU and control workers run the job, a webhooks worker (its
own queue, threads) sends, and a receiver verifies with `standardwebhooks`."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from integrations.webhooks.models import WebhookMessage
from integrations.webhooks.services.endpoints import endpoint_create, endpoint_send_test
from integrations.webhooks.tasks import deliver
from tests.e2e.conftest import E2E_PREFIX, Workers, finished, wait_for
from tests.support.factories import PlanFactory, TenantFactory
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_prefix")]


def test_a_job_run_by_the_workers_reaches_a_verifying_receiver(  # type: ignore[no-untyped-def]
    tenant, model, client, workers: Workers, receiver: Receiver
):
    # given an endpoint subscribed to the start and the success of jobs, and a webhooks worker
    endpoint, secret = endpoint_create(
        tenant=tenant, url=receiver.url(), events=["job.started", "job.succeeded"]
    )
    receiver.secrets.append(secret)
    workers.start_sender("webhooks", "webhooks-e2e", SDSAAS_WEBHOOK_ALLOW_HOSTS=receiver.host)
    try:
        # when a job runs on the GPU worker
        body = {"model": "tiny", "prompt": "a fox", "steps": 2, "width": 64, "height": 64}
        response = client.post("/v1/jobs", body, format="json")
        assert response.status_code == 202, response.json()
        job = response.json()
        finished(client, job["id"])
        wait_for(lambda: len(receiver.unique()) == 2, 60, "two verified deliveries")
    finally:
        workers.stop("webhooks-e2e", wake=wake_sender)  # the next test sends on the same queue
    # then the receiver verified one job.started and one job.succeeded for it
    events = sorted((r.payload["type"], r.payload["data"]["id"]) for r in receiver.unique())
    assert events == [("job.started", job["id"]), ("job.succeeded", job["id"])]
    assert all(r.verified_by == [secret] for r in receiver.received)
    assert WebhookMessage.objects.filter(endpoint=endpoint, status="succeeded").count() == 2


def test_a_dead_endpoint_of_one_tenant_does_not_delay_another_tenants_deliveries(
    workers: Workers, receiver: Receiver, settings: Any
) -> None:
    # given tenant A's endpoint on a port that accepts connections and never answers
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        dead.listen(64)
        dead_host = f"127.0.0.1:{dead.getsockname()[1]}"
        settings.WEBHOOK_ALLOW_HOSTS = frozenset({receiver.host, dead_host})
        tenant_a = TenantFactory(plan=PlanFactory())
        tenant_b = TenantFactory(plan=PlanFactory())
        dead_endpoint, _ = endpoint_create(
            tenant=tenant_a, url=f"http://{dead_host}/hook", events=["job.succeeded"]
        )
        live_endpoint, secret = endpoint_create(
            tenant=tenant_b, url=receiver.url(), events=["job.succeeded"]
        )
        receiver.secrets.append(secret)
        allow = f"{receiver.host},{dead_host}"
        workers.start_sender("webhooks", "webhooks-fair", SDSAAS_WEBHOOK_ALLOW_HOSTS=allow)
        try:
            # a baseline: B's test event with nothing else in flight
            baseline = time_to_receive(tenant_b, live_endpoint.public_id, receiver)
            # when A has ten messages for its dead endpoint, its sends hanging up to 15 s each
            for _ in range(10):
                endpoint_send_test(tenant=tenant_a, endpoint_id=dead_endpoint.public_id)
            wait_for(
                lambda: (
                    WebhookMessage.objects.filter(endpoint=dead_endpoint, status="sending").count()
                    == settings.WEBHOOK_TARGET_CONCURRENCY
                ),
                10,
                "A's messages in flight",
            )
            time.sleep(1)  # A's sends are under way
            # then B's next event arrives about as fast as with nothing else in flight
            contended = time_to_receive(tenant_b, live_endpoint.public_id, receiver)
        finally:
            # The warm stop waits for A's sends: closed, the endpoint resets them at once (each
            # then ends as a retry, as at its 15 s timeout) instead of hanging out that timeout.
            dead.close()
            workers.stop("webhooks-fair", wake=wake_sender)
    print(f"B's delivery: {baseline:.2f} s alone, {contended:.2f} s beside A's dead endpoint")
    assert contended < max(3 * baseline, 3.0)  # a head-of-line block would cost A's 15 s timeout
    # and A never had more than its share in flight
    assert (
        WebhookMessage.objects.filter(endpoint=dead_endpoint, status="pending").count()
        >= 10 - settings.WEBHOOK_TARGET_CONCURRENCY
    )


def wake_sender() -> None:
    """A delivery of no message (no row has pk 0), sent to end a stopping sender's open long
    poll; a later sender that runs it finds nothing to send."""
    deliver.apply_async(args=[0], queue=f"{E2E_PREFIX}-webhooks")


def time_to_receive(tenant: Any, endpoint_id: str, receiver: Receiver) -> float:
    """Seconds from a test event's creation to its verified arrival."""
    before = len(receiver.unique())
    started = time.monotonic()
    endpoint_send_test(tenant=tenant, endpoint_id=endpoint_id)
    wait_for(lambda: len(receiver.unique()) > before, 30, "the test event")
    return time.monotonic() - started
