"""Reads of webhook endpoints and messages, always of one tenant: another's is a 404."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from integrations.webhooks.models import (
    EndpointNotice,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from sdsaas.errors import NotFound
from tenants.models import Tenant


def endpoint_list(*, tenant: Tenant) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(tenant=tenant).order_by("-id")


def endpoint_get(*, tenant: Tenant, public_id: str) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(tenant=tenant, public_id=public_id).first()
    if endpoint is None:
        raise NotFound(f"No webhook endpoint {public_id}.")
    return endpoint


def message_get(*, tenant: Tenant, public_id: str) -> WebhookMessage:
    message = WebhookMessage.objects.filter(tenant=tenant, public_id=public_id).first()
    if message is None:
        raise NotFound(f"No webhook message {public_id}.")
    return message


def endpoint_messages(*, tenant: Tenant, endpoint_id: str) -> QuerySet[WebhookMessage]:
    """The endpoint's messages, newest first, with their attempts."""
    endpoint = endpoint_get(tenant=tenant, public_id=endpoint_id)
    return WebhookMessage.objects.filter(endpoint=endpoint).prefetch_related("log").order_by("-id")


def message_attempts(*, message: WebhookMessage) -> QuerySet[WebhookAttempt]:
    return message.log.order_by("id")


# --- for the API and the admin: what one page shows, in a constant number of queries ------------

# How many of an endpoint's notices its object shows, newest first.
RECENT_NOTICES = 10


def _recent_notices() -> Prefetch:
    return Prefetch(
        "notices",
        queryset=EndpointNotice.objects.order_by("-id")[:RECENT_NOTICES],
        to_attr="recent_notices",
    )


def endpoint_list_with_notices(*, tenant: Tenant) -> QuerySet[WebhookEndpoint]:
    """The tenant's endpoints, newest first, each with `recent_notices` (one query a page)."""
    return endpoint_list(tenant=tenant).prefetch_related(_recent_notices())


def endpoint_notices(*, endpoint: WebhookEndpoint) -> list[EndpointNotice]:
    """The endpoint's RECENT_NOTICES newest notices: prefetched by a list, read for one."""
    prefetched: list[EndpointNotice] | None = getattr(endpoint, "recent_notices", None)
    if prefetched is not None:
        return prefetched
    return list(endpoint.notices.order_by("-id")[:RECENT_NOTICES])


def endpoint_deliveries(
    *, tenant: Tenant, endpoint_id: str, status: str | None = None
) -> QuerySet[WebhookMessage]:
    """The endpoint's delivery log, newest first: its messages (of one status, if given) with
    their job and attempts, in a constant number of queries a page."""
    messages = endpoint_messages(tenant=tenant, endpoint_id=endpoint_id).select_related(
        "endpoint", "job"
    )
    if status is not None:
        messages = messages.filter(status=status)
    return messages


def endpoint_recent_messages(*, endpoint: WebhookEndpoint, limit: int) -> list[WebhookMessage]:
    """The endpoint's `limit` newest messages with their job, for the operators' page."""
    return list(endpoint.messages.select_related("job").order_by("-id")[:limit])
