"""Webhook endpoints, the messages owed to them, and every attempt to deliver one.

A message is one event for one target (an endpoint, or a job's own `webhook` URL). Its public
id is the `webhook-id` header, the same on every attempt, so a receiver dedupes on it. Its due
time is the durable retry schedule: the scheduler sweeps due messages onto the webhooks queue.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from jobs.announcements import JobEventType
from jobs.models import Job, public_id
from tenants.models import Tenant


def endpoint_public_id() -> str:
    return public_id("whe")


def message_public_id() -> str:
    return public_id("msg")


def attempt_public_id() -> str:
    return public_id("wha")


class EventType(models.TextChoices):
    JOB_STARTED = JobEventType.STARTED.value
    JOB_PROGRESS = JobEventType.PROGRESS.value
    JOB_SUCCEEDED = JobEventType.SUCCEEDED.value
    JOB_FAILED = JobEventType.FAILED.value
    JOB_CANCELED = JobEventType.CANCELED.value
    # Sent only by the "send test event" action, to one endpoint, whatever it subscribes to.
    TEST = "webhook.test"


class RotatingSecret(models.Model):
    """A signing secret, encrypted with SDSAAS_WEBHOOK_SECRET_KEYS (webhooks/secrets.py), never
    stored in clear. After a rotation the previous secret signs too, until it expires
    (integrations/webhooks/services/endpoints.py, `secret_rotate`)."""

    secret_encrypted = models.TextField()
    previous_secret_encrypted = models.TextField(blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class WebhookEndpoint(RotatingSecret):
    """A tenant's URL that receives the event types it subscribes to, signed with its secret."""

    public_id = models.CharField(max_length=32, unique=True, default=endpoint_public_id)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=2048)
    events = models.JSONField(default=list, help_text="Event types, e.g. job.succeeded.")
    description = models.CharField(max_length=256, blank=True)
    enabled = models.BooleanField(default=True)
    # Set when a message used up its schedule; cleared by the next success.
    failing_since = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=256, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "id"])]

    def __str__(self) -> str:
        return self.public_id


class EndpointNotice(models.Model):
    """What happened to an endpoint that its tenant is told about, once each time."""

    class Kind(models.TextChoices):
        FAILING = "failing"  # a message used up its schedule
        DISABLED = "disabled"  # 410 Gone, or failing for days
        RECOVERED = "recovered"  # a success after failing

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="notices")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    detail = models.CharField(max_length=512)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.kind}"


class JobWebhookSecret(RotatingSecret):
    """The tenant's secret for per-job webhooks (the `webhook` field of a job)."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"per-job webhook secret of {self.tenant}"


class WebhookMessage(models.Model):
    """One event owed to one target; delivered once it gets a 2xx, or given up."""

    class Status(models.TextChoices):
        PENDING = "pending"  # due at `due_at`
        SENDING = "sending"  # handed to the webhooks queue; back to pending if it stalls
        SUCCEEDED = "succeeded"
        FAILED = "failed"  # the schedule is used up, or the endpoint was disabled

    public_id = models.CharField(max_length=32, unique=True, default=message_public_id)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    endpoint = models.ForeignKey(
        WebhookEndpoint, null=True, blank=True, on_delete=models.CASCADE, related_name="messages"
    )
    job_url = models.URLField(max_length=2048, blank=True, help_text="Per-job webhook target.")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    event_type = models.CharField(max_length=32, choices=EventType.choices)
    # The body's `data` as of the event; output URLs are presigned again at each send.
    data = models.JSONField(default=dict)
    event_at = models.DateTimeField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    due_at = models.DateTimeField(null=True, blank=True)
    sending_since = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["status", "due_at"]),
            models.Index(fields=["endpoint", "id"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(endpoint__isnull=False) | ~Q(job_url=""), name="webhook_message_target"
            )
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.event_type}"


class WebhookAttempt(models.Model):
    """The delivery log: one row per HTTP attempt of a message."""

    public_id = models.CharField(max_length=32, unique=True, default=attempt_public_id)
    message = models.ForeignKey(WebhookMessage, on_delete=models.CASCADE, related_name="log")
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    response_excerpt = models.TextField(blank=True)  # the first RESPONSE_EXCERPT_BYTES
    error = models.CharField(max_length=256, blank=True)  # no response: why
    succeeded = models.BooleanField(default=False)

    class Meta:
        ordering = ["id"]
        # The attempts of the last minutes (integrations/webhooks/metrics.py).
        indexes = [models.Index(fields=["started_at"])]

    def __str__(self) -> str:
        return f"{self.message_id}#{self.number} {self.status_code or self.error}"
