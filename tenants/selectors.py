from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone

from tenants.models import CreditPeriod, Tenant, month_of


def _next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def usage_summary(
    *, tenant: Tenant, jobs_in_flight: int, now: dt.datetime | None = None
) -> dict[str, Any]:
    """The tenant's plan, this month's credits and its concurrency. `jobs_in_flight` comes from
    the caller (jobs' selectors): tenants knows nothing of jobs."""
    month = month_of(now or timezone.now())
    period = CreditPeriod.objects.filter(tenant=tenant, month=month).first()
    used = period.used if period else 0
    reserved = period.reserved if period else 0
    plan = tenant.plan
    return {
        "period": {"start": month, "end": _next_month(month)},
        "credits": {
            "limit": plan.monthly_credits,
            "used": used,
            "reserved": reserved,
            "remaining": max(0, plan.monthly_credits - used - reserved),
        },
        "concurrency": {
            "limit": plan.max_concurrent_jobs,
            "in_flight": jobs_in_flight,
        },
        "limits": {
            "requests_per_minute": plan.requests_per_minute,
            "max_pixels": plan.max_pixels,
            "max_steps": plan.max_steps,
        },
    }
