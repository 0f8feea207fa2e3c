"""The webhook API's delivery log (`/v1/webhooks/endpoints/{id}/deliveries`), test events, and
redelivery: of one message (`/v1/webhooks/deliveries/{id}/redeliver`) and of an endpoint's failed
ones since a time (`…/redeliver-failed`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from integrations.webhooks.models import EndpointNotice, WebhookMessage
from jobs.models import Job
from sdsaas.broker.sqs import webhooks_queue_name
from sdsaas.contract import TASK_WEBHOOK_DELIVER
from tenants.models import Tenant
from tests.support.aws import LocalAws
from tests.support.factories import JobFactory, api_client_for
from tests.support.webhooks_api import ENDPOINTS, OTHER_URL, URL, new_endpoint, new_message

pytestmark = pytest.mark.django_db

MESSAGE_FIELDS = {
    "id",
    "event_type",
    "status",
    "endpoint",
    "job",
    "attempts",
    "next_attempt_at",
    "delivered_at",
    "created_at",
    "log",
}


def test_the_delivery_log_shows_each_message_with_its_attempts(tenant: Tenant) -> None:
    # given an endpoint's messages: delivered on the second try, failed, and waiting
    endpoint = new_endpoint(tenant)
    job = JobFactory(tenant=tenant, status=Job.Status.SUCCEEDED)
    delivered = new_message(endpoint, status="succeeded", job=job, attempts=[(500, ""), (204, "")])
    failed = new_message(endpoint, status="failed", attempts=[(None, "timed out")])
    waiting = new_message(endpoint, status="pending")
    new_message(new_endpoint(tenant, url=OTHER_URL), status="failed")  # another endpoint's
    client = api_client_for(tenant)
    # when the log is read
    response = client.get(f"{ENDPOINTS}/{endpoint.public_id}/deliveries")
    # then it lists the endpoint's messages, newest first
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [m["id"] for m in results] == [
        waiting.public_id,
        failed.public_id,
        delivered.public_id,
    ]
    shown = {m["id"]: m for m in results}
    # and each message says where it stands, with every attempt, oldest first
    one = shown[delivered.public_id]
    assert set(one) == MESSAGE_FIELDS
    assert one["id"].startswith("msg_")
    assert (one["event_type"], one["status"], one["attempts"]) == ("job.succeeded", "succeeded", 2)
    assert (one["job"], one["endpoint"]) == (job.public_id, endpoint.public_id)
    assert one["delivered_at"] is not None and one["next_attempt_at"] is None
    assert one["log"] == [
        {
            "number": 1,
            "started_at": one["log"][0]["started_at"],
            "status_code": 500,
            "latency_ms": 10,
            "response_excerpt": "answer 1",
            "error": "",
            "succeeded": False,
        },
        {
            "number": 2,
            "started_at": one["log"][1]["started_at"],
            "status_code": 204,
            "latency_ms": 20,
            "response_excerpt": "answer 2",
            "error": "",
            "succeeded": True,
        },
    ]
    gave_up = shown[failed.public_id]
    assert (gave_up["status"], gave_up["job"], gave_up["delivered_at"]) == ("failed", None, None)
    assert gave_up["log"][0]["status_code"] is None
    assert gave_up["log"][0]["error"] == "timed out"
    assert shown[waiting.public_id]["next_attempt_at"] is not None
    assert shown[waiting.public_id]["log"] == []
    # and ?status=failed lists the failed one only
    only_failed = client.get(f"{ENDPOINTS}/{endpoint.public_id}/deliveries?status=failed")
    assert [m["id"] for m in only_failed.json()["results"]] == [failed.public_id]


def _queries(client: APIClient, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(captured.captured_queries)


def test_list_pages_take_as_many_queries_for_many_rows_as_for_one(tenant: Tenant) -> None:
    # given an endpoint with one message of one attempt, and one notice
    endpoint = new_endpoint(tenant)
    EndpointNotice.objects.create(endpoint=endpoint, kind="failing", detail="x")
    new_message(endpoint, status="failed", attempts=[(500, "")], job=JobFactory(tenant=tenant))
    client = api_client_for(tenant)
    deliveries = f"{ENDPOINTS}/{endpoint.public_id}/deliveries"
    _queries(client, ENDPOINTS)  # a key's first use writes its last_used_at
    few = (_queries(client, ENDPOINTS), _queries(client, deliveries))
    # when there are many more endpoints, notices, messages, jobs and attempts
    for n in range(6):
        other = new_endpoint(tenant, url=f"{URL}/{n}")
        EndpointNotice.objects.create(endpoint=other, kind="failing", detail="x")
        EndpointNotice.objects.create(endpoint=endpoint, kind="recovered", detail="y")
        new_message(
            endpoint,
            status="succeeded",
            attempts=[(500, ""), (None, "refused"), (200, "")],
            job=JobFactory(tenant=tenant),
        )
    # then each page costs the same number of queries
    assert (_queries(client, ENDPOINTS), _queries(client, deliveries)) == few


def test_a_test_event_is_queued_for_the_endpoint(
    tenant: Tenant,
    local_aws: LocalAws,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    # given an endpoint subscribed to job events only
    endpoint = new_endpoint(tenant, events=["job.failed"])
    client = api_client_for(tenant)
    # when a test event is sent to it
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"{ENDPOINTS}/{endpoint.public_id}/test")
    # then the answer is the new message, waiting for its first attempt
    assert response.status_code == 202, response.content
    body = response.json()
    assert set(body) == MESSAGE_FIELDS
    assert (body["event_type"], body["status"], body["attempts"]) == ("webhook.test", "pending", 0)
    assert (body["endpoint"], body["job"], body["log"]) == (endpoint.public_id, None, [])
    # and, once committed, it is handed to the webhooks queue
    message = WebhookMessage.objects.get(public_id=body["id"])
    assert message.status == WebhookMessage.Status.SENDING
    tasks = local_aws.drain_tasks(webhooks_queue_name())
    lease = message.sending_since.isoformat()
    assert tasks == [
        {"task": TASK_WEBHOOK_DELIVER, "kwargs": {"message_pk": message.pk, "lease": lease}}
    ]


def test_redeliver_sends_a_settled_message_again_and_leaves_a_waiting_one(
    tenant: Tenant,
    local_aws: LocalAws,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    # given a failed message and one waiting for its next attempt
    endpoint = new_endpoint(tenant)
    failed = new_message(endpoint, status="failed", attempts=[(500, "")] * 3)
    waiting = new_message(endpoint, status="pending", attempts=[(503, "")])
    waiting_row = WebhookMessage.objects.filter(pk=waiting.pk).values().get()
    client = api_client_for(tenant)
    # when each is redelivered
    with django_capture_on_commit_callbacks(execute=True):
        again = client.post(f"/v1/webhooks/deliveries/{failed.public_id}/redeliver")
        left = client.post(f"/v1/webhooks/deliveries/{waiting.public_id}/redeliver")
    # then the failed one is due now with the same id and its log, and goes to the queue
    assert again.status_code == 202, again.content
    body = again.json()
    assert (body["id"], body["status"], body["attempts"]) == (failed.public_id, "pending", 3)
    assert len(body["log"]) == 3
    assert body["next_attempt_at"] is not None
    assert WebhookMessage.objects.get(pk=failed.pk).status == WebhookMessage.Status.SENDING
    tasks = local_aws.drain_tasks(webhooks_queue_name())
    assert [t["kwargs"]["message_pk"] for t in tasks] == [failed.pk]
    # and the waiting one is answered as it is, unchanged
    assert left.status_code == 202, left.content
    assert left.json()["status"] == "pending"
    assert WebhookMessage.objects.filter(pk=waiting.pk).values().get() == waiting_row


def test_redeliver_failed_sends_again_the_failed_messages_since_a_time(tenant: Tenant) -> None:
    # given failed messages from two and from ten days ago, and recent ones that did not fail
    endpoint = new_endpoint(tenant)
    now = timezone.now()
    old = new_message(endpoint, status="failed", created_at=now - dt.timedelta(days=10))
    recent = [
        new_message(endpoint, status="failed", created_at=now - dt.timedelta(days=2))
        for _ in range(2)
    ]
    delivered = new_message(endpoint, status="succeeded", created_at=now - dt.timedelta(days=1))
    other = new_message(new_endpoint(tenant, url=OTHER_URL), status="failed")
    client = api_client_for(tenant)
    since = (now - dt.timedelta(days=3)).isoformat()
    # when the failed ones of the last three days are redelivered
    response = client.post(
        f"{ENDPOINTS}/{endpoint.public_id}/redeliver-failed", {"since": since}, format="json"
    )
    # then the answer counts them, and just they are due again
    assert response.status_code == 202, response.content
    assert response.json() == {"count": 2}
    status = dict(WebhookMessage.objects.values_list("pk", "status"))
    assert {status[m.pk] for m in recent} == {"pending"}
    assert (status[old.pk], status[delivered.pk], status[other.pk]) == (
        "failed",
        "succeeded",
        "failed",
    )
