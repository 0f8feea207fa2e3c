from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from sdsaas.errors import InvalidInput, QuotaExceeded, RateLimited
from tenants.models import ApiKey, CreditPeriod, Plan, RateWindow, Tenant, UsageRecord, month_of

logger = logging.getLogger(__name__)

KEY_PREFIX = "sk_live_"
_PREFIX = re.compile(r"\A[0-9a-f]{1,16}\Z")  # as `api_key_issue` writes it: 12 hex digits
# last_used_at is refreshed at most this often, so that reads do not write on every request.
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


def _hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def tenant_create(*, name: str, plan: Plan | None = None) -> Tenant:
    if plan is None:
        plan, _ = Plan.objects.get_or_create(name="default")
    return Tenant.objects.create(name=name, plan=plan)


def api_key_issue(
    *, tenant: Tenant, scopes: Iterable[str] | None = None, name: str = ""
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext, which is shown once and never stored."""
    valid = set(ApiKey.Scope.values)
    chosen = sorted(set(scopes) if scopes is not None else valid)
    unknown = [scope for scope in chosen if scope not in valid]
    if unknown:
        raise InvalidInput("scopes", f"unknown scope(s) {unknown}; choose from {sorted(valid)}")
    prefix = secrets.token_hex(6)
    plaintext = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        tenant=tenant, name=name, prefix=prefix, key_hash=_hash_key(plaintext), scopes=chosen
    )
    return key, plaintext


def api_key_revoke(*, key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def api_key_authenticate(*, plaintext: str) -> ApiKey | None:
    """The live key for `plaintext`, or None (malformed, unknown, revoked, tenant suspended)."""
    if not plaintext.startswith(KEY_PREFIX):
        return None
    prefix, sep, _secret = plaintext[len(KEY_PREFIX) :].partition("_")
    if not sep or not _PREFIX.match(prefix):  # NUL and the like never reach the database
        return None
    try:  # get, not first: the prefix is unique, and first's ORDER BY costs every request
        key = ApiKey.objects.select_related("tenant", "tenant__plan").get(prefix=prefix)
    except ApiKey.DoesNotExist:
        return None
    if not hmac.compare_digest(key.key_hash, _hash_key(plaintext)):
        return None
    if key.is_revoked or not key.tenant.is_active:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def rate_limit_hit(*, tenant: Tenant, now: dt.datetime | None = None) -> None:
    """Count one write request; raise RateLimited past the plan's requests per minute.

    Race-safe: the increment is a conditional UPDATE, which Postgres serialises on the row.
    """
    now = now or timezone.now()
    window_start = now.replace(second=0, microsecond=0)
    limit = tenant.plan.requests_per_minute
    window = RateWindow.objects.filter(tenant=tenant, window_start=window_start, count__lt=limit)
    if window.update(count=F("count") + 1):
        return
    try:
        with transaction.atomic():
            RateWindow.objects.create(tenant=tenant, window_start=window_start, count=1)
        return
    except IntegrityError:
        pass  # the window exists (full, or created by a concurrent request): count against it
    if window.update(count=F("count") + 1):
        return
    retry_after = max(1, 60 - now.second)
    raise RateLimited(
        f"Rate limit of {limit} requests per minute exceeded.", retry_after=retry_after
    )


def rate_windows_prune(*, now: dt.datetime | None = None) -> int:
    """Delete the windows of past minutes (only the current one is ever counted); how many."""
    current = (now or timezone.now()).replace(second=0, microsecond=0)
    deleted, _ = RateWindow.objects.filter(window_start__lt=current).delete()
    return deleted


def _credit_period(*, tenant: Tenant, month: dt.date) -> CreditPeriod:
    try:
        with transaction.atomic():
            period, _ = CreditPeriod.objects.get_or_create(tenant=tenant, month=month)
    except IntegrityError:
        period = CreditPeriod.objects.get(tenant=tenant, month=month)
    return period


def credits_reserve(*, tenant: Tenant, amount: int, now: dt.datetime | None = None) -> dt.date:
    """Reserve `amount` credits in the current month; return the month they were taken from.

    Race-safe: one conditional UPDATE checks and takes the credits, so parallel submits can never
    reserve more than the plan allows. One statement when the month's period exists.
    """
    month = month_of(now or timezone.now())
    limit = tenant.plan.monthly_credits
    period = CreditPeriod.objects.filter(tenant=tenant, month=month)
    enough = period.filter(reserved__lte=limit - amount - F("used"))
    if enough.update(reserved=F("reserved") + amount):
        return month
    # Either the month has no period yet, or it lacks the credits: ask again once it exists.
    _credit_period(tenant=tenant, month=month)
    if enough.update(reserved=F("reserved") + amount):
        return month
    current = period.get()
    remaining = max(0, limit - current.used - current.reserved)
    raise QuotaExceeded(
        f"Monthly image credits exhausted: {remaining} left, {amount} asked.",
        details={"remaining": remaining, "requested": amount, "limit": limit},
    )


def credits_release(*, tenant: Tenant, month: dt.date, amount: int) -> None:
    """Give back `amount` reserved credits of `month`; never below zero. Fewer reserved than
    released means credits were released twice or never reserved: logged as the bug it is."""
    if not amount:
        return
    released = CreditPeriod.objects.filter(tenant=tenant, month=month, reserved__gte=amount).update(
        reserved=F("reserved") - amount
    )
    if not released:
        logger.error(
            "tenant %s: %d credits of %s released, but fewer were reserved",
            tenant.pk,
            amount,
            month,
        )


def usage_record_images(
    *, tenant: Tenant, job_id: int, month: dt.date, reserved: int, produced: int, model_slug: str
) -> None:
    """Meter a finished job's images once and settle its reservation.

    Callers run this inside the transaction that moves the job to a final state, so it runs at
    most once per job; the unique (job, index) constraint guards the ledger as well.
    """
    UsageRecord.objects.bulk_create(
        [
            UsageRecord(
                tenant=tenant, job_id=job_id, image_index=i, month=month, model_slug=model_slug
            )
            for i in range(produced)
        ]
    )
    CreditPeriod.objects.filter(tenant=tenant, month=month).update(
        reserved=F("reserved") - reserved, used=F("used") + produced
    )
