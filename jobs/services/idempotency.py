"""Idempotency-Key handling shared by the creating services: the request fingerprint and
`idempotent_create`, which runs a create once per key and answers repeats with a replay."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs.models import IdempotencyRecord, Job
from sdsaas.errors import Conflict, IdempotencyKeyReused
from tenants.models import Tenant

T = TypeVar("T")


def request_fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def idempotency_records_prune(*, now: dt.datetime | None = None) -> int:
    """Delete the records past their TTL (a key is free again after it); how many."""
    cutoff = (now or timezone.now()) - dt.timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted


def idempotent_create(
    *,
    tenant: Tenant,
    scope: str,
    key: str | None,
    fingerprint: str,
    create: Callable[[], T],
    replay: Callable[[IdempotencyRecord], T],
) -> tuple[T, bool]:
    """Run `create` once per (tenant, scope, key) within the TTL; return (object, created).

    The key's record is inserted first, in the same transaction as the object: a concurrent
    request with the same key blocks on the unique index until the first one commits, then
    fails with IntegrityError and is answered with the first request's object.
    """
    if key is None:
        with transaction.atomic():
            return create(), True
    for _ in range(2):
        try:
            with transaction.atomic():
                cutoff = timezone.now() - dt.timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS)
                IdempotencyRecord.objects.filter(
                    tenant=tenant, scope=scope, key=key, created_at__lt=cutoff
                ).delete()
                existing = IdempotencyRecord.objects.filter(
                    tenant=tenant, scope=scope, key=key
                ).first()
                if existing is not None:
                    if existing.request_hash != fingerprint:
                        raise IdempotencyKeyReused(
                            "This Idempotency-Key was used with a different request body.",
                        )
                    return replay(existing), False
                record = IdempotencyRecord.objects.create(
                    tenant=tenant, scope=scope, key=key, request_hash=fingerprint
                )
                created = create()
                field = "job" if isinstance(created, Job) else "upload"
                setattr(record, field, created)
                record.save(update_fields=[field])
                return created, True
        except IntegrityError:
            continue  # a concurrent request with the same key committed first: replay it
    raise Conflict("A concurrent request with this Idempotency-Key is still in progress.")
