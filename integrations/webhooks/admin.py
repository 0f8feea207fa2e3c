"""Operators' pages of webhooks: endpoints (with their notices and recent messages) and messages
(with their attempts). A signing secret is never shown, except once, to the operator who
rotates it. Changes go through the services, as the API's do."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timezone import localtime

from integrations.admin import ReadOnlyInline
from integrations.webhooks.models import (
    EndpointNotice,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from integrations.webhooks.selectors import endpoint_recent_messages
from integrations.webhooks.services.delivery import endpoint_disable
from integrations.webhooks.services.endpoints import (
    endpoint_rotate_secret,
    endpoint_send_test,
    endpoint_update,
    message_redeliver,
)
from sdsaas.errors import ServiceError

MISSING = "—"
RECENT_MESSAGES = 20
SECRET_FIELDS = ("secret_encrypted", "previous_secret_encrypted")
# What an operator may change on an endpoint's page; the tenant owns the rest (through the API).
ENDPOINT_EDITABLE = ("enabled", "description")
OPERATOR_DISABLED = "disabled by an operator"


def _time(value: Any) -> str:
    return localtime(value).isoformat(sep=" ", timespec="seconds") if value else MISSING


class EndpointNoticeInline(ReadOnlyInline):
    model = EndpointNotice
    fields = readonly_fields = ("created_at", "kind", "detail")
    ordering = ["-id"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[EndpointNotice]:
        # Each row is titled with str(notice), which names the endpoint: not a query each.
        return super().get_queryset(request).select_related("endpoint")


class WebhookAttemptInline(ReadOnlyInline):
    model = WebhookAttempt
    fields = readonly_fields = (
        "number",
        "started_at",
        "status_code",
        "latency_ms",
        "error",
        "response_excerpt",
        "succeeded",
    )


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = [
        "public_id",
        "tenant",
        "url",
        "enabled",
        "failing_since",
        "disabled_reason",
        "created_at",
    ]
    list_select_related = ["tenant"]
    list_filter = ["enabled", "tenant"]
    search_fields = ["public_id", "url"]
    actions = ["rotate_secret", "send_test"]
    inlines = [EndpointNoticeInline]
    exclude = SECRET_FIELDS
    readonly_fields = [
        *(
            f.name
            for f in WebhookEndpoint._meta.fields
            if f.name not in (*ENDPOINT_EDITABLE, *SECRET_FIELDS, "id")
        ),
        "recent_messages",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A tenant creates its endpoints, and is the one shown their secret.
        return False

    def save_model(
        self, request: HttpRequest, obj: WebhookEndpoint, form: ModelForm, change: bool
    ) -> None:
        # Through the services: disabling tells the tenant why and fails what was waiting;
        # enabling again clears the reason and the failing state.
        changed = set(form.changed_data)
        if not changed:
            return
        if "enabled" in changed and not obj.enabled:
            endpoint_disable(obj, reason=OPERATOR_DISABLED)
        endpoint_update(
            tenant=obj.tenant,
            endpoint_id=obj.public_id,
            description=obj.description if "description" in changed else None,
            enabled=True if "enabled" in changed and obj.enabled else None,
        )
        obj.refresh_from_db()

    @admin.action(description="Rotate the signing secret (shows the new one once)")
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        hours = settings.WEBHOOK_ROTATION_WINDOW_S / 3600
        for endpoint in queryset.select_related("tenant"):
            _, secret = endpoint_rotate_secret(
                tenant=endpoint.tenant, endpoint_id=endpoint.public_id
            )
            self.message_user(
                request,
                f"{endpoint.public_id}: the new signing secret is {secret} — shown this once. "
                f"The previous one also signs for {hours:g} h.",
                messages.WARNING,
            )

    @admin.action(description="Send a test event")
    def send_test(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset.select_related("tenant"):
            message = endpoint_send_test(tenant=endpoint.tenant, endpoint_id=endpoint.public_id)
            self.message_user(
                request, f"{endpoint.public_id}: test event {message.public_id} queued."
            )

    @admin.display(description="Recent messages")
    def recent_messages(self, endpoint: WebhookEndpoint) -> SafeString | str:
        recent = endpoint_recent_messages(endpoint=endpoint, limit=RECENT_MESSAGES)
        if not recent:
            return "No messages."
        rows = format_html_join(
            "",
            "<tr><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "<td>{}</td><td>{}</td></tr>",
            (
                (
                    reverse("admin:webhooks_webhookmessage_change", args=[message.pk]),
                    message.public_id,
                    message.event_type,
                    message.job.public_id if message.job is not None else MISSING,
                    message.status,
                    message.attempts,
                    _time(message.created_at),
                    _time(message.delivered_at),
                )
                for message in recent
            ),
        )
        return format_html(
            '<table class="webhook-messages"><thead><tr><th>Message</th><th>Event</th>'
            "<th>Job</th><th>Status</th><th>Attempts</th><th>Created</th><th>Delivered</th>"
            "</tr></thead><tbody>{}</tbody></table>",
            rows,
        )


@admin.register(WebhookMessage)
class WebhookMessageAdmin(admin.ModelAdmin):
    list_display = [
        "public_id",
        "tenant",
        "endpoint",
        "event_type",
        "status",
        "attempts",
        "due_at",
        "delivered_at",
        "created_at",
    ]
    # The endpoint and the job are nullable, which the admin's own select_related() leaves out.
    list_select_related = ["tenant", "endpoint"]
    list_filter = ["status", "event_type"]
    search_fields = ["public_id", "endpoint__public_id", "job__public_id"]
    actions = ["redeliver"]
    inlines = [WebhookAttemptInline]
    readonly_fields = [f.name for f in WebhookMessage._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookMessage]:
        # The change page shows the job and the endpoint by name: not a query each.
        return super().get_queryset(request).select_related("tenant", "endpoint", "job")

    @admin.action(description="Redeliver (same webhook-id)")
    def redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookMessage]) -> None:
        sent = []
        for message in queryset.select_related("tenant"):
            if message.status not in (
                WebhookMessage.Status.SUCCEEDED,
                WebhookMessage.Status.FAILED,
            ):
                self.message_user(
                    request,
                    f"{message.public_id} is still {message.status}: left as it is.",
                    messages.WARNING,
                )
                continue
            try:
                message_redeliver(tenant=message.tenant, message_id=message.public_id)
            except ServiceError as exc:
                self.message_user(request, f"{message.public_id}: {exc.message}", messages.WARNING)
                continue
            sent.append(message.public_id)
        if sent:
            self.message_user(request, f"Queued again: {', '.join(sent)}.")
