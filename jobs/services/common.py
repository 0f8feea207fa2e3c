"""What every stage of a job's flow shares: the tenant lock and the job's event log.

Lock order, to stay free of deadlocks: every service that changes a tenant's jobs or credits
locks the tenant row first (`lock_tenant`), then touches credit and job rows.
"""

from __future__ import annotations

from typing import Any

from jobs.models import Job, JobEvent
from tenants.models import Tenant


def lock_tenant(tenant: Tenant) -> None:
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()


def record_event(job: Job | int, kind: str, attempt: int, **detail: Any) -> None:
    job_id = job if isinstance(job, int) else job.pk
    JobEvent.objects.create(job_id=job_id, kind=kind, attempt=attempt, detail=detail)
