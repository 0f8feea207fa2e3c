"""Retention: the hourly prune keeps only what can still be used."""

from __future__ import annotations

import datetime as dt

import pytest
from django.conf import settings
from django.utils import timezone

from jobs.models import IdempotencyRecord
from jobs.tasks import prune_records
from sdsaas.contract import TASK_PRUNE_RECORDS
from tenants.models import RateWindow
from tests.support.factories import TenantFactory

pytestmark = pytest.mark.django_db


def test_the_prune_deletes_past_rate_windows_and_expired_idempotency_records() -> None:
    # given a tenant's rate windows of this minute, the last one and an hour ago
    tenant = TenantFactory()
    now = timezone.now()
    minute = now.replace(second=0, microsecond=0)
    for ago in (0, 1, 60):
        RateWindow.objects.create(
            tenant=tenant, window_start=minute - dt.timedelta(minutes=ago), count=3
        )
    # and idempotency records within their TTL and past it
    ttl = dt.timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS)
    for key, age in (("fresh", dt.timedelta(minutes=5)), ("old", ttl + dt.timedelta(minutes=5))):
        record = IdempotencyRecord.objects.create(
            tenant=tenant, scope=IdempotencyRecord.Scope.JOB_CREATE, key=key, request_hash="h"
        )
        IdempotencyRecord.objects.filter(pk=record.pk).update(created_at=now - age)
    # when the prune runs
    pruned = prune_records()
    # then only the current window and the record still in its TTL are left
    assert pruned == {"rate_windows": 2, "idempotency_records": 1}
    assert list(RateWindow.objects.values_list("window_start", flat=True)) == [minute]
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["fresh"]


def test_the_prune_runs_hourly_on_the_scheduler() -> None:
    schedule = {
        entry["task"]: entry["schedule"] for entry in settings.CELERY_BEAT_SCHEDULE.values()
    }
    assert schedule[TASK_PRUNE_RECORDS] == 3600.0
