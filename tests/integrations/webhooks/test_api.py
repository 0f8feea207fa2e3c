"""The webhook API (`/v1/webhooks/…`): endpoints and their secrets, the delivery log, redelivery,
the per-job secret; its scope, its validation, and two tenants that never see each other's."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from integrations.webhooks.models import (
    EndpointNotice,
    EventType,
    JobWebhookSecret,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from integrations.webhooks.secrets import secret_decrypt
from integrations.webhooks.services.endpoints import endpoint_create
from jobs.models import Job
from sdsaas.broker.sqs import webhooks_queue_name
from sdsaas.contract import TASK_WEBHOOK_DELIVER
from tenants.models import Tenant
from tests.sdsaas.test_openapi import assert_documented, fetch_schema
from tests.support.api import assert_error
from tests.support.aws import LocalAws
from tests.support.factories import JobFactory, api_client_for

pytestmark = pytest.mark.django_db

ENDPOINTS = "/v1/webhooks/endpoints"
# Public address literals: valid endpoint URLs with no DNS lookup, and nothing ever sent to them
# (no sender runs in these tests).
URL = "https://1.1.1.1/hooks"
OTHER_URL = "https://8.8.8.8/other"
MANAGE = "webhooks:manage"
ENDPOINT_FIELDS = {
    "id",
    "url",
    "events",
    "enabled",
    "description",
    "disabled_reason",
    "failing_since",
    "notices",
    "created_at",
}
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


# --- helpers -------------------------------------------------------------------------------------


def new_endpoint(tenant: Tenant, url: str = URL, events: list[str] | None = None) -> Any:
    endpoint, _ = endpoint_create(
        tenant=tenant, url=url, events=events or ["job.succeeded", "job.failed"]
    )
    return endpoint


def new_message(
    endpoint: WebhookEndpoint,
    *,
    status: str = WebhookMessage.Status.PENDING,
    attempts: list[tuple[int | None, str]] = (),  # type: ignore[assignment]
    job: Job | None = None,
    created_at: dt.datetime | None = None,
) -> WebhookMessage:
    """A message as the sender leaves it, with one attempt per (status code, error)."""
    now = timezone.now()
    settled = status in (WebhookMessage.Status.SUCCEEDED, WebhookMessage.Status.FAILED)
    message = WebhookMessage.objects.create(
        tenant=endpoint.tenant,
        endpoint=endpoint,
        job=job,
        event_type=EventType.JOB_SUCCEEDED if job else EventType.TEST,
        event_at=now,
        status=status,
        attempts=len(attempts),
        due_at=None if settled else now + dt.timedelta(minutes=5),
        delivered_at=now if status == WebhookMessage.Status.SUCCEEDED else None,
    )
    for number, (code, error) in enumerate(attempts, start=1):
        WebhookAttempt.objects.create(
            message=message,
            number=number,
            started_at=now,
            status_code=code,
            latency_ms=10 * number,
            response_excerpt=f"answer {number}" if code else "",
            error=error,
            succeeded=code is not None and 200 <= code < 300,
        )
    if created_at is not None:  # auto_now_add: only an update sets another time
        WebhookMessage.objects.filter(pk=message.pk).update(created_at=created_at)
        message.refresh_from_db()
    return message


def endpoint_row(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return WebhookEndpoint.objects.filter(pk=endpoint.pk).values().get()


def message_rows(endpoint: WebhookEndpoint) -> list[dict[str, Any]]:
    return list(WebhookMessage.objects.filter(endpoint=endpoint).order_by("id").values())


def create_body(**fields: Any) -> dict[str, Any]:
    return {"url": URL, "events": ["job.succeeded"], **fields}


def secret_of(endpoint_id: str) -> str:
    return secret_decrypt(WebhookEndpoint.objects.get(public_id=endpoint_id).secret_encrypted)


# --- create, read, change, delete ----------------------------------------------------------------


def test_create_shows_the_secret_once_and_stores_it_encrypted(tenant: Tenant) -> None:
    # given a key with the webhooks:manage scope only
    client = api_client_for(tenant, scopes=[MANAGE])
    # when an endpoint is created
    response = client.post(
        ENDPOINTS,
        create_body(events=["job.failed", "job.succeeded"], description="prod"),
        format="json",
    )
    # then the answer is the endpoint, with its secret
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == ENDPOINT_FIELDS | {"secret"}
    assert body["id"].startswith("whe_")
    assert body["url"] == URL
    assert body["events"] == ["job.succeeded", "job.failed"]  # in the documented order
    assert (body["enabled"], body["description"]) == (True, "prod")
    assert (body["disabled_reason"], body["failing_since"], body["notices"]) == (None, None, [])
    secret = body["secret"]
    assert secret.startswith("whsec_") and len(secret) > len("whsec_") + 40
    # and it is stored encrypted, never as shown, and decrypts to what was shown
    stored = WebhookEndpoint.objects.get(public_id=body["id"])
    assert stored.tenant == tenant
    assert secret not in stored.secret_encrypted
    assert secret_decrypt(stored.secret_encrypted) == secret
    # and no later answer about it shows the secret again
    later = [
        client.get(ENDPOINTS),
        client.get(f"{ENDPOINTS}/{body['id']}"),
        client.patch(f"{ENDPOINTS}/{body['id']}", {"description": "x"}, format="json"),
        client.post(f"{ENDPOINTS}/{body['id']}/test"),
        client.get(f"{ENDPOINTS}/{body['id']}/deliveries"),
    ]
    for answer in later:
        assert answer.status_code in (200, 202), answer.content
        assert '"secret"' not in answer.content.decode()
        assert secret not in answer.content.decode()


def test_get_and_list_show_the_endpoint_with_its_recent_notices(tenant: Tenant) -> None:
    # given an endpoint that failed, was disabled, then recovered
    endpoint = new_endpoint(tenant)
    for kind in ("failing", "disabled", "recovered"):
        EndpointNotice.objects.create(endpoint=endpoint, kind=kind, detail=f"it was {kind}")
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(disabled_reason="")
    client = api_client_for(tenant)
    # when it is read, alone and in the list
    one = client.get(f"{ENDPOINTS}/{endpoint.public_id}")
    listed = client.get(ENDPOINTS)
    # then both show it the same way, its notices newest first
    assert one.status_code == listed.status_code == 200
    assert listed.json()["results"] == [one.json()]
    notices = one.json()["notices"]
    assert [n["kind"] for n in notices] == ["recovered", "disabled", "failing"]
    assert notices[0]["detail"] == "it was recovered"
    assert set(notices[0]) == {"kind", "detail", "created_at"}


def test_patch_changes_the_given_fields_and_enabling_clears_the_failure(tenant: Tenant) -> None:
    # given an endpoint disabled by the sender after failing
    endpoint = new_endpoint(tenant)
    failing_since = timezone.now() - dt.timedelta(days=6)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        enabled=False, disabled_reason="every delivery failed", failing_since=failing_since
    )
    client = api_client_for(tenant)
    url = f"{ENDPOINTS}/{endpoint.public_id}"
    shown = client.get(url).json()
    assert shown["enabled"] is False
    assert shown["disabled_reason"] == "every delivery failed"
    assert shown["failing_since"] is not None
    # when its URL and events change, then it is enabled again
    changed = client.patch(url, {"url": OTHER_URL, "events": ["job.canceled"]}, format="json")
    enabled = client.patch(url, {"enabled": True, "description": "fixed"}, format="json")
    # then each answer is the endpoint as changed, the other fields as they were
    assert changed.status_code == 200, changed.content
    assert changed.json()["url"] == OTHER_URL
    assert changed.json()["events"] == ["job.canceled"]
    assert changed.json()["enabled"] is False
    assert enabled.status_code == 200, enabled.content
    body = enabled.json()
    assert (body["url"], body["events"], body["description"]) == (
        OTHER_URL,
        ["job.canceled"],
        "fixed",
    )
    assert (body["enabled"], body["disabled_reason"], body["failing_since"]) == (True, None, None)
    # and an empty PATCH changes nothing
    assert client.patch(url, {}, format="json").json() == body


def test_delete_removes_the_endpoint_and_its_log(tenant: Tenant) -> None:
    # given an endpoint with a delivered message
    endpoint = new_endpoint(tenant)
    new_message(endpoint, status="succeeded", attempts=[(200, "")])
    client = api_client_for(tenant)
    url = f"{ENDPOINTS}/{endpoint.public_id}"
    # when it is deleted
    response = client.delete(url)
    # then the answer is an empty 204, and it is gone with its messages and their attempts
    assert response.status_code == 204
    assert response.content == b""
    assert_error(client.get(url), 404, "not_found")
    assert not WebhookMessage.objects.exists()
    assert not WebhookAttempt.objects.exists()


def test_rotate_returns_a_new_secret_once_and_the_old_one_still_signs(tenant: Tenant) -> None:
    # given an endpoint created through the API
    client = api_client_for(tenant)
    created = client.post(ENDPOINTS, create_body(), format="json").json()
    old = created["secret"]
    # when its secret is rotated
    response = client.post(f"{ENDPOINTS}/{created['id']}/rotate-secret")
    # then the answer is the endpoint with a new secret, stored encrypted
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == ENDPOINT_FIELDS | {"secret"}
    assert body["id"] == created["id"]
    new = body["secret"]
    assert new.startswith("whsec_") and new != old
    assert secret_of(created["id"]) == new
    # and the old one is kept, encrypted, for the rotation window
    stored = WebhookEndpoint.objects.get(public_id=created["id"])
    assert secret_decrypt(stored.previous_secret_encrypted) == old
    assert stored.previous_secret_expires_at is not None
    assert stored.previous_secret_expires_at > timezone.now()
    # and reading the endpoint shows neither
    content = client.get(f"{ENDPOINTS}/{created['id']}").content.decode()
    assert old not in content and new not in content


def test_the_job_secret_is_shown_once_stored_encrypted_and_replaced(tenant: Tenant) -> None:
    client = api_client_for(tenant, scopes=[MANAGE])
    # when the per-job secret is issued twice
    first = client.post("/v1/webhooks/job-secret")
    second = client.post("/v1/webhooks/job-secret")
    # then each answer holds a new secret, and only the second is kept, encrypted
    assert first.status_code == second.status_code == 201, first.content
    assert set(first.json()) == {"secret"}
    old, new = first.json()["secret"], second.json()["secret"]
    assert old.startswith("whsec_") and new.startswith("whsec_") and old != new
    (stored,) = JobWebhookSecret.objects.all()
    assert stored.tenant == tenant
    assert new not in stored.secret_encrypted
    assert secret_decrypt(stored.secret_encrypted) == new


def test_the_endpoint_list_pages_newest_first_with_cursors(tenant: Tenant) -> None:
    # given five endpoints
    ids = [new_endpoint(tenant, url=f"{URL}/{n}").public_id for n in range(5)]
    client = api_client_for(tenant)
    # when they are listed two at a time, following `next`
    seen: list[str] = []
    url: str | None = f"{ENDPOINTS}?limit=2"
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.content
        seen += [e["id"] for e in page.json()["results"]]
        url = page.json()["next"]
    # then every one comes once, newest first
    assert seen == ids[::-1]


# --- the delivery log, test events and redelivery ------------------------------------------------


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
    assert tasks == [{"task": TASK_WEBHOOK_DELIVER, "kwargs": {"message_pk": message.pk}}]


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


# --- validation ----------------------------------------------------------------------------------

# (body, the error message's field path, the field that details name)
BAD_CREATES = [
    ({"url": "http://1.1.1.1/x"}, "url", "url"),
    ({"url": "https://10.0.0.1/x"}, "url", "url"),
    ({"url": "https://127.0.0.1/x"}, "url", "url"),
    ({"url": "https://[::1]/x"}, "url", "url"),
    ({"url": "https://169.254.169.254/latest/meta-data"}, "url", "url"),
    ({"url": "https://user:pw@1.1.1.1/x"}, "url", "url"),
    ({"url": "https://1.1.1.1:99999/x"}, "url", "url"),
    ({"url": "https://1.1.1.1/a b"}, "url", "url"),
    ({"url": "https://1.1.1.1/a\x00b"}, "url", "url"),
    ({"url": "https://1.1.1.1/é"}, "url", "url"),
    ({"url": "not a url"}, "url", "url"),
    ({"url": "https://1.1.1.1/" + "a" * 2048}, "url", "url"),
    ({"url": ""}, "url", "url"),
    ({"url": None}, "url", "url"),
    ({"url": 5}, "url", "url"),
    ({"url": ["https://1.1.1.1/"]}, "url", "url"),
    ({"events": []}, "events", "events"),
    ({"events": "job.succeeded"}, "events", "events"),
    ({"events": None}, "events", "events"),
    ({"events": ["job.exploded"]}, "events[0]", "events"),
    ({"events": ["webhook.test"]}, "events[0]", "events"),
    ({"events": ["job.succeeded", 1]}, "events[1]", "events"),
    ({"events": ["job.succeeded"] * 6}, "events", "events"),
    ({"description": "x" * 257}, "description", "description"),
    ({"description": 1}, "description", "description"),
    ({"secret": "whsec_mine"}, "secret", "secret"),
    ({"enabled": False}, "enabled", "enabled"),
]


@pytest.mark.parametrize(("fields", "path", "field"), BAD_CREATES, ids=repr)
def test_an_invalid_create_is_a_400_naming_the_field(
    tenant: Tenant, fields: dict[str, Any], path: str, field: str
) -> None:
    client = api_client_for(tenant)
    # when an endpoint is created with one bad field
    response = client.post(ENDPOINTS, create_body(**fields), format="json")
    # then it is a 400 in the one error shape, naming the field, and nothing is created
    assert_error(response, 400, "invalid_input")
    body = response.json()["error"]
    assert body["message"].startswith(f"{path}:"), body
    assert field in body["details"], body
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        b'{"url": "https://1.1.1.1/\\ud800", "events": ["job.succeeded"]}',
        b'{"url": "https://1.1.1.1/", "events": ["job.succeeded"], "description": "\\udfff"}',
        b'{"url": "https://1.1.1.1/", "events": ["job.succeeded"]',
        b"[]",
        b'"https://1.1.1.1/"',
    ],
    ids=["lone-surrogate-url", "lone-surrogate-description", "truncated", "array", "string"],
)
def test_a_malformed_create_is_a_400_never_a_500(tenant: Tenant, body: bytes) -> None:
    response = api_client_for(tenant).post(ENDPOINTS, body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert set(response.json()["error"]) == {"code", "message", "details"}
    assert not WebhookEndpoint.objects.exists()


def test_a_missing_field_or_a_form_body_is_refused(tenant: Tenant) -> None:
    client = api_client_for(tenant)
    assert_error(
        client.post(ENDPOINTS, {"url": URL}, format="json"), 400, "invalid_input", "events"
    )
    assert_error(
        client.post(ENDPOINTS, {"events": ["job.failed"]}, format="json"),
        400,
        "invalid_input",
        "url",
    )
    assert_error(client.post(ENDPOINTS, create_body()), 415, "unsupported_media_type")
    assert not WebhookEndpoint.objects.exists()


BAD_PATCHES = [
    ({"url": "https://10.0.0.1/x"}, "url"),
    ({"url": "http://1.1.1.1/x"}, "url"),
    ({"url": None}, "url"),
    ({"events": []}, "events"),
    ({"events": ["job.exploded"]}, "events[0]"),
    ({"enabled": "false"}, "enabled"),
    ({"enabled": 0}, "enabled"),
    ({"enabled": None}, "enabled"),
    ({"description": None}, "description"),
    ({"secret": "whsec_mine"}, "secret"),
]


@pytest.mark.parametrize(("fields", "path"), BAD_PATCHES, ids=repr)
def test_an_invalid_patch_is_a_400_and_changes_nothing(
    tenant: Tenant, fields: dict[str, Any], path: str
) -> None:
    # given an endpoint
    endpoint = new_endpoint(tenant)
    before = endpoint_row(endpoint)
    # when it is patched with one bad field
    response = api_client_for(tenant).patch(
        f"{ENDPOINTS}/{endpoint.public_id}", fields, format="json"
    )
    # then it is a 400 naming the field, and the endpoint is as it was
    assert_error(response, 400, "invalid_input")
    assert response.json()["error"]["message"].startswith(f"{path}:")
    assert endpoint_row(endpoint) == before


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"since": 1700000000}, "since"),
        ({"since": None}, "since"),
        ({"since": "9999-12-31T23:59:59-23:00"}, "since"),
        ({"since": "2024-01-01T00:00:00Z", "status": "failed"}, "status"),
    ],
    ids=repr,
)
def test_an_invalid_redeliver_failed_is_a_400_and_sends_nothing(
    tenant: Tenant, body: dict[str, Any], path: str
) -> None:
    endpoint = new_endpoint(tenant)
    failed = new_message(endpoint, status="failed")
    response = api_client_for(tenant).post(
        f"{ENDPOINTS}/{endpoint.public_id}/redeliver-failed", body, format="json"
    )
    assert_error(response, 400, "invalid_input")
    assert response.json()["error"]["message"].startswith(f"{path}:")
    assert WebhookMessage.objects.get(pk=failed.pk).status == WebhookMessage.Status.FAILED


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("status=lost", "status"),
        ("status=", "status"),
        ("status=failed&status=pending", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("cursor=abc", "cursor"),
        ("cursor=cD05OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5", "cursor"),
        ("verbose=1", "verbose"),
    ],
)
def test_an_invalid_query_is_a_400(tenant: Tenant, query: str, path: str) -> None:
    endpoint = new_endpoint(tenant)
    client = api_client_for(tenant)
    response = client.get(f"{ENDPOINTS}/{endpoint.public_id}/deliveries?{query}")
    assert_error(response, 400, "invalid_input")
    assert response.json()["error"]["message"].startswith(f"{path}:")
    if path != "status":
        listed = client.get(f"{ENDPOINTS}?{query}")
        assert_error(listed, 400, "invalid_input")
        assert listed.json()["error"]["message"].startswith(f"{path}:")


def test_a_tenant_has_at_most_twenty_endpoints(tenant: Tenant) -> None:
    for n in range(20):
        new_endpoint(tenant, url=f"{URL}/{n}")
    response = api_client_for(tenant).post(ENDPOINTS, create_body(), format="json")
    assert_error(response, 409, "conflict")
    assert WebhookEndpoint.objects.count() == 20


def test_a_method_an_operation_does_not_have_is_a_405(tenant: Tenant) -> None:
    endpoint = new_endpoint(tenant)
    client = api_client_for(tenant)
    assert_error(client.put(f"{ENDPOINTS}/{endpoint.public_id}", {}), 405, "method_not_allowed")
    assert_error(client.delete(ENDPOINTS), 405, "method_not_allowed")
    assert_error(client.get("/v1/webhooks/job-secret"), 405, "method_not_allowed")


# --- access: the scope, and two tenants ----------------------------------------------------------

# Every operation, on `{endpoint}` and `{message}` of their owner.
OPERATIONS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("get", ENDPOINTS, None),
    ("post", ENDPOINTS, create_body()),
    ("get", f"{ENDPOINTS}/{{endpoint}}", None),
    ("patch", f"{ENDPOINTS}/{{endpoint}}", {"description": "taken", "enabled": False}),
    ("delete", f"{ENDPOINTS}/{{endpoint}}", None),
    ("post", f"{ENDPOINTS}/{{endpoint}}/rotate-secret", None),
    ("post", f"{ENDPOINTS}/{{endpoint}}/test", None),
    ("get", f"{ENDPOINTS}/{{endpoint}}/deliveries", None),
    ("post", f"{ENDPOINTS}/{{endpoint}}/redeliver-failed", {"since": "2000-01-01T00:00:00Z"}),
    ("post", "/v1/webhooks/deliveries/{message}/redeliver", None),
    ("post", "/v1/webhooks/job-secret", None),
]
ON_AN_OBJECT = [op for op in OPERATIONS if "{" in op[1]]


def call(client: APIClient, method: str, path: str, body: dict[str, Any] | None, **ids: str) -> Any:
    url = path.format(**ids)
    return (
        getattr(client, method)(url, body, format="json") if body else getattr(client, method)(url)
    )


def world_state() -> dict[str, Any]:
    """Every webhook row, to compare before and after a refused request."""
    return {
        model.__name__: list(model.objects.order_by("pk").values())
        for model in (WebhookEndpoint, WebhookMessage, WebhookAttempt, JobWebhookSecret)
    }


@pytest.fixture
def owned(tenant: Tenant) -> dict[str, str]:
    """The tenant's endpoint with a failed message, by the ids the paths take."""
    endpoint = new_endpoint(tenant)
    message = new_message(endpoint, status="failed", attempts=[(500, "")])
    return {"endpoint": endpoint.public_id, "message": message.public_id}


@pytest.mark.parametrize(("method", "path", "body"), OPERATIONS, ids=lambda v: str(v))
def test_a_key_without_the_webhooks_scope_gets_a_403_and_changes_nothing(
    tenant: Tenant,
    other_tenant: Tenant,
    owned: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    # given the owner's key and another tenant's key, both with every scope but webhooks:manage
    jobs_only = ["jobs:read", "jobs:write"]
    before = world_state()
    for client in (api_client_for(tenant, jobs_only), api_client_for(other_tenant, jobs_only)):
        # when either calls the operation
        response = call(client, method, path, body, **owned)
        # then it is a 403 naming the scope (checked before the object: no probing of ids)
        assert_error(response, 403, "forbidden")
        assert MANAGE in response.json()["error"]["message"]
    # and nothing changed
    assert world_state() == before


@pytest.mark.parametrize(("method", "path", "body"), ON_AN_OBJECT, ids=lambda v: str(v))
def test_another_tenants_endpoint_or_message_is_a_404_like_a_missing_one(
    tenant: Tenant,
    other_tenant: Tenant,
    owned: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    # given the tenant's endpoint and message, and another tenant with endpoints of its own
    new_message(new_endpoint(other_tenant), status="failed")
    intruder = api_client_for(other_tenant)
    missing = {"endpoint": "whe_00000000000000000000", "message": "msg_00000000000000000000"}
    before = world_state()
    # when the other tenant calls the operation on the tenant's objects, and on missing ones
    theirs = call(intruder, method, path, body, **owned)
    absent = call(intruder, method, path, body, **missing)
    # then both are the same 404, but for the id
    assert_error(theirs, 404, "not_found")
    assert_error(absent, 404, "not_found")
    text = theirs.content.decode()
    for kind, public_id in owned.items():
        text = text.replace(public_id, missing[kind])
    assert json.loads(text) == absent.json()
    # and nothing changed
    assert world_state() == before


@pytest.mark.parametrize(
    "raw_id",
    ["whe_missing", "whe%00x", "%F0%9F%A6%8A", "x" * 500, "%ED%A0%80", "whe_x%20"],
    ids=["missing", "nul", "emoji", "long", "invalid-utf8", "space"],
)
def test_an_id_that_cannot_exist_is_a_404_never_a_500(tenant: Tenant, raw_id: str) -> None:
    # given a tenant with an endpoint and a message (a lookup that ignored the id would find them)
    new_message(new_endpoint(tenant), status="failed")
    client = api_client_for(tenant)
    client.raise_request_exception = False
    before = world_state()
    for method, path, body in ON_AN_OBJECT:
        # when an operation is called with the id, then it is the uniform 404
        response = call(client, method, path, body, endpoint=raw_id, message=raw_id)
        assert_error(response, 404, "not_found")
    assert world_state() == before


def test_each_tenant_lists_only_its_own_endpoints(tenant: Tenant, other_tenant: Tenant) -> None:
    # given two endpoints of one tenant and one of another
    ours = [new_endpoint(tenant, url=f"{URL}/{n}").public_id for n in range(2)]
    theirs = new_endpoint(other_tenant).public_id
    # when each lists its endpoints, then each sees just its own
    listed = api_client_for(tenant).get(ENDPOINTS).json()["results"]
    assert sorted(e["id"] for e in listed) == sorted(ours)
    other_listed = api_client_for(other_tenant).get(ENDPOINTS).json()["results"]
    assert [e["id"] for e in other_listed] == [theirs]


def test_the_owner_can_do_what_the_other_tenant_could_not(
    tenant: Tenant, owned: dict[str, str]
) -> None:
    # the counterpart of the 404s above: the same calls by the owner succeed
    client = api_client_for(tenant, scopes=[MANAGE])
    expected = {"get": 200, "patch": 200, "delete": 204}
    for method, path, body in ON_AN_OBJECT:
        if method == "delete":
            continue
        response = call(client, method, path, body, **owned)
        wanted = expected.get(
            method, 202 if path.endswith(("/test", "redeliver", "failed")) else 200
        )
        assert response.status_code == wanted, (method, path, response.content)
    assert call(client, "delete", f"{ENDPOINTS}/{{endpoint}}", None, **owned).status_code == 204


# --- the schema ----------------------------------------------------------------------------------

WEBHOOK_PATHS = {
    "/v1/webhooks/endpoints": {"get", "post"},
    "/v1/webhooks/endpoints/{endpoint_id}": {"get", "patch", "delete"},
    "/v1/webhooks/endpoints/{endpoint_id}/rotate-secret": {"post"},
    "/v1/webhooks/endpoints/{endpoint_id}/test": {"post"},
    "/v1/webhooks/endpoints/{endpoint_id}/deliveries": {"get"},
    "/v1/webhooks/endpoints/{endpoint_id}/redeliver-failed": {"post"},
    "/v1/webhooks/deliveries/{message_id}/redeliver": {"post"},
    "/v1/webhooks/job-secret": {"post"},
}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def test_the_schema_documents_every_webhook_operation(db: None) -> None:
    document = fetch_schema()
    for path, methods in WEBHOOK_PATHS.items():
        assert set(document["paths"][path]) & METHODS == methods, path
        for method in methods:
            operation = document["paths"][path][method]
            assert operation["security"] == [{"ApiKey": []}], (path, method)
            assert {"400", "401", "403"} <= set(operation["responses"]), (path, method)
            if "{" in path:
                assert "404" in operation["responses"], (path, method)
    # and the secret is in the answers that make one, and in no other
    with_secret = document["components"]["schemas"]["WebhookEndpointWithSecret"]
    assert "secret" in with_secret["required"]
    assert "secret" not in document["components"]["schemas"]["WebhookEndpoint"]["properties"]
    create = document["components"]["schemas"]["WebhookEndpointCreateRequest"]
    assert create["additionalProperties"] is False
    assert create["properties"]["events"]["minItems"] == 1


def test_webhook_answers_match_the_documented_schemas(tenant: Tenant) -> None:
    # given the schema, and an endpoint with a notice and a logged message
    document = fetch_schema()
    client = api_client_for(tenant)
    created = client.post(ENDPOINTS, create_body(), format="json")
    endpoint = WebhookEndpoint.objects.get(public_id=created.json()["id"])
    EndpointNotice.objects.create(endpoint=endpoint, kind="failing", detail="x")
    message = new_message(
        endpoint, status="failed", attempts=[(None, "refused")], job=JobFactory(tenant=tenant)
    )
    e, m = endpoint.public_id, message.public_id
    one = "/v1/webhooks/endpoints/{endpoint_id}"
    calls = [
        ("/v1/webhooks/endpoints", "post", created),
        ("/v1/webhooks/endpoints", "get", client.get(ENDPOINTS)),
        (one, "get", client.get(f"{ENDPOINTS}/{e}")),
        (one, "patch", client.patch(f"{ENDPOINTS}/{e}", {"enabled": False}, format="json")),
        (one, "patch", client.patch(f"{ENDPOINTS}/{e}", {"events": []}, format="json")),
        (f"{one}/deliveries", "get", client.get(f"{ENDPOINTS}/{e}/deliveries")),
        (f"{one}/test", "post", client.post(f"{ENDPOINTS}/{e}/test")),
        (f"{one}/rotate-secret", "post", client.post(f"{ENDPOINTS}/{e}/rotate-secret")),
        (
            f"{one}/redeliver-failed",
            "post",
            client.post(
                f"{ENDPOINTS}/{e}/redeliver-failed", {"since": "2020-01-01"}, format="json"
            ),
        ),
        (
            "/v1/webhooks/deliveries/{message_id}/redeliver",
            "post",
            client.post(f"/v1/webhooks/deliveries/{m}/redeliver"),
        ),
        ("/v1/webhooks/job-secret", "post", client.post("/v1/webhooks/job-secret")),
        (one, "get", client.get(f"{ENDPOINTS}/whe_missing")),
    ]
    # when each is called, then its answer has the documented shape
    for path, method, response in calls:
        assert response.status_code < 500, (path, method, response.content)
        assert_documented(document, path, method, response)
    # and a DELETE's 204 is documented, without a body
    deleted = client.delete(f"{ENDPOINTS}/{e}")
    assert deleted.status_code == 204
    assert "content" not in document["paths"][one]["delete"]["responses"]["204"]
