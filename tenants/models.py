from __future__ import annotations

import datetime as dt

from django.core.validators import MinValueValidator
from django.db import models


class Plan(models.Model):
    """Quotas shared by the tenants on a plan."""

    name = models.CharField(max_length=64, unique=True)
    monthly_credits = models.PositiveIntegerField(
        default=1000, help_text="Images a tenant may generate per calendar month (UTC)."
    )
    max_concurrent_jobs = models.PositiveIntegerField(
        default=2, validators=[MinValueValidator(1)], help_text="Jobs in the GPU queues at once."
    )
    requests_per_minute = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1)], help_text="Write requests per minute."
    )
    max_pixels = models.PositiveIntegerField(
        default=1024 * 1024, help_text="Cap on width x height of one image."
    )
    max_steps = models.PositiveIntegerField(default=50, validators=[MinValueValidator(1)])

    def __str__(self) -> str:
        return self.name


class Tenant(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"

    name = models.CharField(max_length=128, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="tenants")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class ApiKey(models.Model):
    """`sk_live_<prefix>_<secret>`: the prefix is public and indexed, only the SHA-256 is kept."""

    class Scope(models.TextChoices):
        JOBS_READ = "jobs:read"
        JOBS_WRITE = "jobs:write"
        WEBHOOKS_MANAGE = "webhooks:manage"
        DISCORD_MANAGE = "discord:manage"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=128, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"sk_live_{self.prefix}_…"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class CreditPeriod(models.Model):
    """One tenant's credit counters for one calendar month.

    Invariant (kept by conditional updates in services): reserved + used <= the plan's credits at
    the time of each reservation. Reserved credits belong to jobs not yet finished.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="credit_periods")
    month = models.DateField(help_text="First day of the month (UTC).")
    reserved = models.PositiveIntegerField(default=0)
    used = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "month"], name="uniq_credit_period")
        ]

    def __str__(self) -> str:
        return f"{self.tenant} {self.month:%Y-%m}"


class UsageRecord(models.Model):
    """The ledger: one row per generated image, written once (unique by job and index)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="usage_records")
    job = models.ForeignKey("jobs.Job", on_delete=models.PROTECT, related_name="usage_records")
    image_index = models.PositiveSmallIntegerField()
    month = models.DateField()
    model_slug = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "image_index"], name="uniq_usage_image")
        ]
        indexes = [models.Index(fields=["tenant", "month"])]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.image_index}"


class RateWindow(models.Model):
    """Fixed one-minute window counter of a tenant's write requests."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    window_start = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "window_start"], name="uniq_rate_window")
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.window_start:%H:%M} {self.count}"


def month_of(moment: dt.datetime) -> dt.date:
    return dt.date(moment.year, moment.month, 1)
