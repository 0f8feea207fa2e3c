"""Tenants' webhook endpoints and signing secrets; redelivery and test events.

Every service takes the tenant explicitly: another tenant's endpoint or message is a 404.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from integrations.safe_http import FetchError, check_url
from integrations.webhooks import selectors
from integrations.webhooks.models import (
    EventType,
    JobWebhookSecret,
    WebhookEndpoint,
    WebhookMessage,
)
from integrations.webhooks.secrets import (
    secret_decrypt,
    secret_encrypt,
    secret_new,
    secret_reencrypt,
)
from integrations.webhooks.services.dispatch import messages_dispatch
from sdsaas.errors import Conflict, InvalidInput
from tenants.models import Tenant

SUBSCRIBABLE = [t.value for t in EventType if t != EventType.TEST]
MAX_ENDPOINTS_PER_TENANT = 20


def webhook_url_check(url: str, *, field: str = "url") -> None:
    """https, or plain http to a host:port of SDSAAS_WEBHOOK_ALLOW_HOSTS; never a private
    address (checked again at every send: DNS can change after registration)."""
    try:
        check_url(url, allow_http_hosts=settings.WEBHOOK_ALLOW_HOSTS)
    except FetchError as exc:
        raise InvalidInput(field, exc.message) from None


def event_types_check(events: list[str], *, field: str = "events") -> list[str]:
    unknown = sorted(set(events) - set(SUBSCRIBABLE))
    if unknown:
        raise InvalidInput(field, f"unknown event types {unknown}; known: {SUBSCRIBABLE}")
    return [t for t in SUBSCRIBABLE if t in events]


@transaction.atomic
def endpoint_create(
    *, tenant: Tenant, url: str, events: list[str], description: str = ""
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret, which is shown this once."""
    if not events:
        raise InvalidInput("events", "subscribe to at least one event type")
    webhook_url_check(url)
    if WebhookEndpoint.objects.filter(tenant=tenant).count() >= MAX_ENDPOINTS_PER_TENANT:
        raise Conflict(f"A tenant may have at most {MAX_ENDPOINTS_PER_TENANT} endpoints.")
    secret = secret_new()
    endpoint = WebhookEndpoint.objects.create(
        tenant=tenant,
        url=url,
        events=event_types_check(events),
        description=description,
        secret_encrypted=secret_encrypt(secret),
    )
    return endpoint, secret


def endpoint_update(
    *,
    tenant: Tenant,
    endpoint_id: str,
    url: str | None = None,
    events: list[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    """Change the given fields only: a disable (a 410, days of failures) or a secret rotation
    that happens meanwhile is kept."""
    endpoint = selectors.endpoint_get(tenant=tenant, public_id=endpoint_id)
    changed = ["updated_at"]
    if url is not None:
        webhook_url_check(url)
        endpoint.url = url
        changed.append("url")
    if events is not None:
        if not events:
            raise InvalidInput("events", "subscribe to at least one event type")
        endpoint.events = event_types_check(events)
        changed.append("events")
    if description is not None:
        endpoint.description = description
        changed.append("description")
    if enabled is not None:
        endpoint.enabled = enabled
        changed.append("enabled")
        if enabled:  # enabled again by the tenant: a fresh start
            endpoint.disabled_reason, endpoint.failing_since = "", None
            changed += ["disabled_reason", "failing_since"]
    endpoint.save(update_fields=changed)
    return endpoint


def endpoint_delete(*, tenant: Tenant, endpoint_id: str) -> None:
    selectors.endpoint_get(tenant=tenant, public_id=endpoint_id).delete()


@transaction.atomic
def endpoint_rotate_secret(*, tenant: Tenant, endpoint_id: str) -> tuple[WebhookEndpoint, str]:
    """A new secret, shown this once; the previous one also signs for the rotation window.
    Rotations of one endpoint take turns (row lock): each secret shown is the one stored."""
    endpoint = selectors.endpoint_get(tenant=tenant, public_id=endpoint_id)
    endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    secret = secret_new()
    endpoint.previous_secret_encrypted = endpoint.secret_encrypted
    endpoint.previous_secret_expires_at = timezone.now() + dt.timedelta(
        seconds=settings.WEBHOOK_ROTATION_WINDOW_S
    )
    endpoint.secret_encrypted = secret_encrypt(secret)
    endpoint.save(
        update_fields=[
            "previous_secret_encrypted",
            "previous_secret_expires_at",
            "secret_encrypted",
            "updated_at",
        ]
    )
    return endpoint, secret


def endpoint_send_test(*, tenant: Tenant, endpoint_id: str) -> WebhookMessage:
    """A `webhook.test` message to this endpoint, whatever it subscribes to."""
    endpoint = selectors.endpoint_get(tenant=tenant, public_id=endpoint_id)
    now = timezone.now()
    message = WebhookMessage.objects.create(
        tenant=tenant,
        endpoint=endpoint,
        event_type=EventType.TEST,
        data={"endpoint": endpoint.public_id, "message": "A test event from sdsaas."},
        event_at=now,
        due_at=now,
    )
    transaction.on_commit(lambda: messages_dispatch(message_ids=[message.pk]))
    return message


def message_redeliver(*, tenant: Tenant, message_id: str) -> WebhookMessage:
    """Try a settled message again now, with its `webhook-id`; a waiting one is left as it is."""
    message = selectors.message_get(tenant=tenant, public_id=message_id)
    if message.status in (WebhookMessage.Status.SUCCEEDED, WebhookMessage.Status.FAILED):
        _due_now([message.pk])
        message.refresh_from_db()
    return message


def messages_redeliver_failed(*, tenant: Tenant, endpoint_id: str, since: dt.datetime) -> int:
    """Try again every failed message of the endpoint created since `since`; how many."""
    endpoint = selectors.endpoint_get(tenant=tenant, public_id=endpoint_id)
    ids = list(
        WebhookMessage.objects.filter(
            endpoint=endpoint, status=WebhookMessage.Status.FAILED, created_at__gte=since
        ).values_list("pk", flat=True)
    )
    _due_now(ids)
    return len(ids)


def _due_now(message_ids: list[int]) -> None:
    now = timezone.now()
    WebhookMessage.objects.filter(pk__in=message_ids).update(
        status=WebhookMessage.Status.PENDING, due_at=now, delivered_at=None
    )
    transaction.on_commit(lambda: messages_dispatch(message_ids=message_ids))


def job_webhook_validate(*, tenant: Tenant, url: str) -> None:
    """A job's own `webhook` at submit: a URL we may send to, and a per-job secret to sign with."""
    webhook_url_check(url, field="webhook")
    if not JobWebhookSecret.objects.filter(tenant=tenant).exists():
        raise InvalidInput(
            "webhook", "issue a per-job webhook secret first: POST /v1/webhooks/job-secret"
        )


def job_secret_issue(*, tenant: Tenant) -> str:
    """A new secret for the tenant's per-job webhooks, shown this once (the old one stops)."""
    secret = secret_new()
    JobWebhookSecret.objects.update_or_create(
        tenant=tenant, defaults={"secret_encrypted": secret_encrypt(secret)}
    )
    return secret


def job_secret(*, tenant: Tenant) -> str:
    """The per-job webhook secret, to sign with; InvalidInput if the tenant issued none."""
    found = JobWebhookSecret.objects.filter(tenant=tenant).first()
    if found is None:
        raise InvalidInput(
            "webhook", "issue a per-job webhook secret first: POST /v1/webhooks/job-secret"
        )
    return secret_decrypt(found.secret_encrypted)


@transaction.atomic
def secrets_reencrypt() -> int:
    """Every stored secret under the first key (the keys' rotation); how many were rewritten."""
    count = 0
    for endpoint in WebhookEndpoint.objects.select_for_update():
        endpoint.secret_encrypted = secret_reencrypt(endpoint.secret_encrypted)
        if endpoint.previous_secret_encrypted:
            endpoint.previous_secret_encrypted = secret_reencrypt(
                endpoint.previous_secret_encrypted
            )
        endpoint.save(update_fields=["secret_encrypted", "previous_secret_encrypted"])
        count += 1
    for job_secret_row in JobWebhookSecret.objects.select_for_update():
        job_secret_row.secret_encrypted = secret_reencrypt(job_secret_row.secret_encrypted)
        job_secret_row.save(update_fields=["secret_encrypted"])
        count += 1
    return count
