"""The operators' webhook pages: endpoints (notices, recent messages, rotate, test, disable) and
messages (attempts, redeliver). A secret is never on a page, but once, to who rotated it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations.webhooks.models import (
    EndpointNotice,
    EventType,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from integrations.webhooks.secrets import secret_decrypt
from integrations.webhooks.services.endpoints import endpoint_create
from sdsaas.broker.sqs import webhooks_queue_name
from tenants.models import Tenant
from tests.support.admin import admin_url, page_messages
from tests.support.aws import LocalAws
from tests.support.factories import JobFactory, TenantFactory

pytestmark = pytest.mark.django_db

URL = "https://1.1.1.1/hooks"  # a public address literal: no DNS lookup


@dataclass
class Hooks:
    """One tenant's endpoint with a notice and a message of two attempts, and its secret."""

    tenant: Tenant
    endpoint: WebhookEndpoint
    secret: str
    message: WebhookMessage


def make_message(endpoint: WebhookEndpoint, status: str, attempts: int) -> WebhookMessage:
    now = timezone.now()
    message = WebhookMessage.objects.create(
        tenant=endpoint.tenant,
        endpoint=endpoint,
        job=JobFactory(tenant=endpoint.tenant),
        event_type=EventType.JOB_SUCCEEDED,
        event_at=now,
        status=status,
        attempts=attempts,
        due_at=now + dt.timedelta(minutes=5) if status == "pending" else None,
    )
    for number in range(1, attempts + 1):
        WebhookAttempt.objects.create(
            message=message,
            number=number,
            started_at=now,
            status_code=500 if number % 2 else None,
            error="" if number % 2 else "connection refused",
            response_excerpt="<h1>oops</h1>" if number % 2 else "",
            latency_ms=12,
        )
    return message


def make_hooks(name: str = "") -> Hooks:
    tenant = TenantFactory(**({"name": name} if name else {}))
    endpoint, secret = endpoint_create(tenant=tenant, url=URL, events=["job.succeeded"])
    EndpointNotice.objects.create(endpoint=endpoint, kind="failing", detail="no 2xx after 10")
    message = make_message(endpoint, "failed", attempts=2)
    return Hooks(tenant, endpoint, secret, message)


@pytest.fixture
def hooks() -> Hooks:
    return make_hooks("acme")


@pytest.fixture
def operator(admin_user: User) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def queries(client: Client, url: str) -> tuple[Any, int]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, url
    return response, len(captured.captured_queries)


# --- pages ---------------------------------------------------------------------------------------


def test_the_endpoint_list_shows_tenant_url_and_failure(operator: Client, hooks: Hooks) -> None:
    # given an endpoint that is failing, and another tenant's disabled one
    WebhookEndpoint.objects.filter(pk=hooks.endpoint.pk).update(failing_since=timezone.now())
    other = make_hooks("globex")
    WebhookEndpoint.objects.filter(pk=other.endpoint.pk).update(
        enabled=False, disabled_reason="the endpoint answered 410 Gone"
    )
    # when the list is opened, then it shows both with their tenant, URL and state
    response = operator.get(admin_url(WebhookEndpoint, "changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    for text in ("acme", "globex", URL, "the endpoint answered 410 Gone"):
        assert text in html
    assert set(response.context["cl"].result_list) == {hooks.endpoint, other.endpoint}
    # and filtering by enabled finds the disabled one
    disabled = operator.get(admin_url(WebhookEndpoint, "changelist"), {"enabled__exact": "0"})
    assert list(disabled.context["cl"].result_list) == [other.endpoint]


@pytest.mark.parametrize("model", [WebhookEndpoint, WebhookMessage], ids=lambda m: m.__name__)
def test_a_list_page_takes_as_many_queries_for_many_rows_as_for_one(
    operator: Client, hooks: Hooks, model: type[Any]
) -> None:
    # given the list with one tenant's rows, loaded once (the session's first load may differ)
    url = admin_url(model, "changelist")
    operator.get(url)
    _, few = queries(operator, url)
    # when four more tenants come, each with an endpoint, a notice and a message
    for _ in range(4):
        make_hooks()
    response, many = queries(operator, url)
    # then the page lists them too, with the same number of queries
    assert response.context["cl"].result_count == 5
    assert many == few


def test_the_endpoint_page_shows_notices_and_recent_messages_but_no_secret(
    operator: Client, hooks: Hooks
) -> None:
    # when the endpoint's page is opened
    response = operator.get(admin_url(WebhookEndpoint, "change", hooks.endpoint.pk))
    # then it shows its notice and its message, with the message's job
    assert response.status_code == 200
    html = response.content.decode()
    assert "no 2xx after 10" in html
    assert hooks.message.public_id in html
    assert hooks.message.job is not None and hooks.message.job.public_id in html
    assert admin_url(WebhookMessage, "change", hooks.message.pk) in html
    # and neither the secret nor its encrypted form is on it, nor a field to edit them
    assert hooks.secret not in html
    assert hooks.endpoint.secret_encrypted not in html
    assert "secret_encrypted" not in html
    # and the only fields an operator may change are enabled and description
    assert set(response.context["adminform"].form.fields) == {"enabled", "description"}


def test_the_endpoint_page_takes_as_many_queries_for_a_long_history(
    operator: Client, hooks: Hooks
) -> None:
    url = admin_url(WebhookEndpoint, "change", hooks.endpoint.pk)
    operator.get(url)
    _, few = queries(operator, url)
    # when the endpoint has many more notices and messages, each with a job
    for n in range(8):
        EndpointNotice.objects.create(endpoint=hooks.endpoint, kind="recovered", detail=str(n))
        make_message(hooks.endpoint, "succeeded", attempts=1)
    _, many = queries(operator, url)
    # then its page costs the same number of queries
    assert many == few


def test_the_message_page_shows_its_attempts_read_only(operator: Client, hooks: Hooks) -> None:
    url = admin_url(WebhookMessage, "change", hooks.message.pk)
    operator.get(url)
    response, few = queries(operator, url)
    # then its attempts are there, with what the endpoint answered or why there was no answer
    html = response.content.decode()
    assert "connection refused" in html
    assert "&lt;h1&gt;oops&lt;/h1&gt;" in html  # the receiver's answer, escaped
    # and nothing on it can be edited, nor an attempt added
    assert list(response.context["adminform"].form.fields) == []
    (inline,) = response.context["inline_admin_formsets"]
    assert inline.formset.total_form_count() == 2
    assert not inline.has_add_permission and not inline.has_change_permission
    # and more attempts cost no more queries
    for number in range(3, 9):
        WebhookAttempt.objects.create(
            message=hooks.message, number=number, started_at=timezone.now(), status_code=502
        )
    _, many = queries(operator, url)
    assert many == few


def test_nothing_can_be_added_by_hand(operator: Client, hooks: Hooks) -> None:
    for model in (WebhookEndpoint, WebhookMessage):
        assert operator.get(admin_url(model, "add")).status_code == 403
        assert operator.post(admin_url(model, "add"), {}).status_code == 403
    assert WebhookEndpoint.objects.count() == WebhookMessage.objects.count() == 1


# --- actions and changes -------------------------------------------------------------------------


def test_rotate_secret_shows_the_new_secret_once(operator: Client, hooks: Hooks) -> None:
    # given two tenants' endpoints
    other = make_hooks("globex")
    untouched = WebhookEndpoint.objects.filter(pk=other.endpoint.pk).values().get()
    # when the operator rotates the first one's secret
    response = operator.post(
        admin_url(WebhookEndpoint, "changelist"),
        {"action": "rotate_secret", "_selected_action": [hooks.endpoint.pk]},
        follow=True,
    )
    # then the page says the new secret, which is now the stored one; the old one still signs
    assert response.status_code == 200
    (message,) = page_messages(response)
    endpoint = WebhookEndpoint.objects.get(pk=hooks.endpoint.pk)
    new = secret_decrypt(endpoint.secret_encrypted)
    assert new != hooks.secret and new.startswith("whsec_")
    assert hooks.endpoint.public_id in message and new in message
    assert secret_decrypt(endpoint.previous_secret_encrypted) == hooks.secret
    # and the next page does not show it again
    again = operator.get(admin_url(WebhookEndpoint, "changelist"))
    assert new not in again.content.decode()
    assert page_messages(again) == []
    # and the other tenant's endpoint is as it was
    assert WebhookEndpoint.objects.filter(pk=other.endpoint.pk).values().get() == untouched


def test_send_test_queues_a_test_event_to_each_selected_endpoint(
    operator: Client,
    hooks: Hooks,
    local_aws: LocalAws,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    # given two tenants' endpoints
    other = make_hooks("globex")
    # when the operator sends a test event to both
    with django_capture_on_commit_callbacks(execute=True):
        response = operator.post(
            admin_url(WebhookEndpoint, "changelist"),
            {"action": "send_test", "_selected_action": [hooks.endpoint.pk, other.endpoint.pk]},
            follow=True,
        )
    # then each has a test message of its own tenant, handed to the webhooks queue
    assert response.status_code == 200
    tests = WebhookMessage.objects.filter(event_type=EventType.TEST)
    assert sorted((m.endpoint_id, m.tenant_id) for m in tests) == sorted(
        [(hooks.endpoint.pk, hooks.tenant.pk), (other.endpoint.pk, other.tenant.pk)]
    )
    assert {m.status for m in tests} == {WebhookMessage.Status.SENDING}
    queued = local_aws.drain_tasks(webhooks_queue_name())
    assert sorted(t["kwargs"]["message_pk"] for t in queued) == sorted(m.pk for m in tests)
    assert len(page_messages(response)) == 2


def test_redeliver_action_sends_a_settled_message_again_and_leaves_a_waiting_one(
    operator: Client, hooks: Hooks
) -> None:
    # given a failed message and one waiting for its next attempt
    waiting = make_message(hooks.endpoint, "pending", attempts=1)
    waiting_row = WebhookMessage.objects.filter(pk=waiting.pk).values().get()
    # when the operator redelivers both
    response = operator.post(
        admin_url(WebhookMessage, "changelist"),
        {"action": "redeliver", "_selected_action": [hooks.message.pk, waiting.pk]},
        follow=True,
    )
    # then the failed one is due again now, with its log, and the waiting one is untouched
    assert response.status_code == 200
    failed = WebhookMessage.objects.get(pk=hooks.message.pk)
    assert failed.status == WebhookMessage.Status.PENDING
    assert failed.due_at is not None and failed.due_at <= timezone.now()
    assert failed.log.count() == 2
    assert WebhookMessage.objects.filter(pk=waiting.pk).values().get() == waiting_row
    # and the operator is told which was queued and which was left
    texts = page_messages(response)
    assert any(waiting.public_id in t and "left as it is" in t for t in texts), texts
    assert any(hooks.message.public_id in t and "Queued again" in t for t in texts), texts


def test_disabling_on_the_page_tells_the_tenant_and_enabling_clears_it(
    operator: Client, hooks: Hooks
) -> None:
    # given an endpoint with a message waiting
    waiting = make_message(hooks.endpoint, "pending", attempts=1)
    url = admin_url(WebhookEndpoint, "change", hooks.endpoint.pk)
    # when the operator unticks "enabled" and saves
    response = operator.post(url, {"description": "paused by support", **_no_inline_changes()})
    # then it is disabled with a reason and a notice for the tenant, and what waited failed
    assert response.status_code == 302, response.content
    endpoint = WebhookEndpoint.objects.get(pk=hooks.endpoint.pk)
    assert (endpoint.enabled, endpoint.description) == (False, "paused by support")
    assert endpoint.disabled_reason == "disabled by an operator"
    assert endpoint.notices.filter(kind="disabled", detail="disabled by an operator").exists()
    assert WebhookMessage.objects.get(pk=waiting.pk).status == WebhookMessage.Status.FAILED
    # when it is ticked again, then it is enabled with the reason and failure cleared
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=timezone.now())
    data = {"enabled": "on", "description": "paused by support", **_no_inline_changes()}
    assert operator.post(url, data).status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.enabled, endpoint.disabled_reason, endpoint.failing_since) == (True, "", None)
    # and the secret was never touched
    assert secret_decrypt(endpoint.secret_encrypted) == hooks.secret


def _no_inline_changes() -> dict[str, str]:
    """The management form of the read-only notices inline, as the page posts it."""
    prefix = "notices"
    return {
        f"{prefix}-TOTAL_FORMS": "0",
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
