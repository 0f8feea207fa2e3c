"""Input validation and the public webhook objects of API v1: endpoints, messages, attempts.

The services check what needs the world (is the URL's host public, is the endpoint the tenant's);
these check types and static bounds, and say in the schema what a field takes.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from integrations.webhooks.models import (
    EndpointNotice,
    EventType,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from integrations.webhooks.selectors import RECENT_NOTICES, endpoint_notices
from integrations.webhooks.services.delivery import RESPONSE_EXCERPT_BYTES
from integrations.webhooks.services.endpoints import SUBSCRIBABLE
from sdsaas.api import (
    URL_CHARS,
    JsonTypedField,
    QuerySerializer,
    StrictCharField,
    StrictChoiceField,
    StrictSerializer,
)

URL_MAX_CHARS = 2048  # WebhookEndpoint.url
DESCRIPTION_MAX_CHARS = 256  # WebhookEndpoint.description


class StrictBooleanField(JsonTypedField, serializers.BooleanField):
    json_types = (bool,)
    json_type_name = "a boolean"


class StrictDateTimeField(JsonTypedField, serializers.DateTimeField):
    json_types = (str,)
    json_type_name = "a string"


# A job's `webhook_events_filter` has these very choices, and drf-spectacular warns when one set
# of choices gets two names (`EventsEnum` and `WebhookEventsFilterEnum`): the id tells them apart.
# Better: one name for both, by an ENUM_NAME_OVERRIDES entry in SPECTACULAR_SETTINGS; then this
# decorator goes.
@extend_schema_field({"type": "string", "enum": SUBSCRIBABLE, "x-spec-enum-id": "webhook-events"})
class EventTypeField(StrictChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=SUBSCRIBABLE, **kwargs)


def _url_field(**kwargs: Any) -> StrictCharField:
    return StrictCharField(
        max_length=URL_MAX_CHARS,
        validators=[URL_CHARS],
        help_text="Where the events are POSTed: an https URL whose host resolves to public "
        "addresses only (checked again at every delivery), without user info.",
        **kwargs,
    )


def _events_field(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(
        child=EventTypeField(),
        allow_empty=False,
        min_length=1,
        max_length=len(SUBSCRIBABLE),
        help_text="The event types the endpoint receives; at least one.",
        **kwargs,
    )


def _description_field(**kwargs: Any) -> StrictCharField:
    return StrictCharField(max_length=DESCRIPTION_MAX_CHARS, allow_blank=True, **kwargs)


class WebhookEndpointCreateSerializer(StrictSerializer):
    """A new endpoint; unknown fields are refused."""

    url = _url_field()
    events = _events_field()
    description = _description_field(required=False)


class WebhookEndpointUpdateSerializer(StrictSerializer):
    """PATCH: the fields given change, the others stay; unknown fields are refused."""

    url = _url_field(required=False)
    events = _events_field(required=False)
    description = _description_field(required=False)
    enabled = StrictBooleanField(
        required=False,
        help_text="`true` enables a disabled endpoint again and clears `disabled_reason` and "
        "`failing_since`.",
    )


class WebhookRedeliverFailedSerializer(StrictSerializer):
    """Which failed messages to send again; unknown fields are refused."""

    since = StrictDateTimeField(
        help_text="ISO 8601; the failed messages created at or after this time are sent again. "
        "Without a UTC offset it is read as UTC."
    )


class PageQuerySerializer(QuerySerializer):
    cursor = StrictCharField(
        required=False, help_text="From a page's `next` or `previous` link; nothing else."
    )
    limit = serializers.IntegerField(min_value=1, max_value=100, default=20)


class DeliveryFilterSerializer(PageQuerySerializer):
    status = StrictChoiceField(choices=WebhookMessage.Status.values, required=False)


# --- output --------------------------------------------------------------------------------------


class WebhookEndpointNoticeSerializer(serializers.ModelSerializer):
    class Meta:
        model = EndpointNotice
        fields = ["kind", "detail", "created_at"]
        read_only_fields = fields


class WebhookEndpointSerializer(serializers.ModelSerializer):
    """The public endpoint object; its secret is never part of it."""

    id = serializers.CharField(source="public_id")
    events = serializers.ListField(child=EventTypeField())
    disabled_reason = serializers.SerializerMethodField()
    failing_since = serializers.DateTimeField(
        allow_null=True,
        help_text="When a message first used up its retries; null again after a success.",
    )
    notices = serializers.SerializerMethodField()

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "events",
            "enabled",
            "description",
            "disabled_reason",
            "failing_since",
            "notices",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(
        serializers.CharField(
            allow_null=True,
            help_text="Why the endpoint was disabled (410 Gone, failing for days, or by an "
            "operator); null while it is enabled or was disabled by the tenant.",
        )
    )
    def get_disabled_reason(self, endpoint: WebhookEndpoint) -> str | None:
        return endpoint.disabled_reason or None

    @extend_schema_field(
        WebhookEndpointNoticeSerializer(
            many=True,
            help_text=f"What happened to the endpoint, newest first, at most {RECENT_NOTICES}: "
            "`failing` (a message got no 2xx answer after every retry), `disabled`, `recovered`.",
        )
    )
    def get_notices(self, endpoint: WebhookEndpoint) -> Any:
        return WebhookEndpointNoticeSerializer(endpoint_notices(endpoint=endpoint), many=True).data


class WebhookEndpointWithSecretSerializer(WebhookEndpointSerializer):
    """The endpoint with its signing secret: only in the answer that made the secret."""

    secret = serializers.SerializerMethodField()

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]
        read_only_fields = fields

    @extend_schema_field(
        serializers.CharField(
            help_text="The signing secret (`whsec_…`, Standard Webhooks): shown this once, "
            "never again."
        )
    )
    def get_secret(self, endpoint: WebhookEndpoint) -> str:
        secret: str = self.context["secret"]
        return secret


class WebhookSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(
        help_text="The per-job webhook signing secret (`whsec_…`): shown this once, never again."
    )


class WebhookAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = [
            "number",
            "started_at",
            "status_code",
            "latency_ms",
            "response_excerpt",
            "error",
            "succeeded",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "status_code": {"help_text": "The HTTP status answered; null if there was no answer."},
            "response_excerpt": {
                "help_text": f"The answer's body, its first {RESPONSE_EXCERPT_BYTES} bytes."
            },
            "error": {"help_text": "Why there was no answer (timeout, refused address, …)."},
        }


class WebhookMessageSerializer(serializers.ModelSerializer):
    """One event owed to one target (an endpoint, or a job's own `webhook`), and the log of its
    attempts."""

    id = serializers.CharField(
        source="public_id", help_text="The `webhook-id` header, the same on every attempt."
    )
    event_type = serializers.ChoiceField(choices=EventType.values)
    endpoint = serializers.SerializerMethodField()
    job = serializers.SerializerMethodField()
    next_attempt_at = serializers.SerializerMethodField()
    log = WebhookAttemptSerializer(many=True, help_text="Every attempt, oldest first.")

    class Meta:
        model = WebhookMessage
        fields = [
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
        ]
        read_only_fields = fields

    @extend_schema_field(
        serializers.CharField(
            allow_null=True,
            help_text="The endpoint's id; null for a job's own `webhook`.",
        )
    )
    def get_endpoint(self, message: WebhookMessage) -> str | None:
        return message.endpoint.public_id if message.endpoint is not None else None

    @extend_schema_field(
        serializers.CharField(allow_null=True, help_text="The job's id; null for a test event.")
    )
    def get_job(self, message: WebhookMessage) -> str | None:
        return message.job.public_id if message.job is not None else None

    @extend_schema_field(
        serializers.DateTimeField(
            allow_null=True,
            help_text="When the next attempt is due, while the message is `pending`; null once "
            "it is being sent or settled.",
        )
    )
    def get_next_attempt_at(self, message: WebhookMessage) -> str | None:
        if message.status != WebhookMessage.Status.PENDING or message.due_at is None:
            return None
        value: str = serializers.DateTimeField().to_representation(message.due_at)
        return value


class WebhookRedeliveredCountSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="How many failed messages will be sent again.")
