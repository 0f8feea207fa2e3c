"""What every stage of a job's flow shares: the tenant lock and the job's event log.

Lock order, to stay free of deadlocks: every service that changes a tenant's jobs or credits
locks the tenant row first (`lock_tenant`), then touches existing credit and job rows. Inserting
new rows may come before it (a submit inserts its job first, to hold the lock briefly).
"""

from __future__ import annotations

from typing import Any

from jobs.models import Job, JobEvent
from tenants.models import Tenant


def lock_tenant(tenant: Tenant) -> None:
    """Serialise the services that change the tenant's jobs or credits, until the commit.

    FOR NO KEY UPDATE, not FOR UPDATE: inserting a row that references the tenant (a job, an
    Idempotency-Key record) takes FOR KEY SHARE on it, which FOR UPDATE would block, so that two
    submits that each inserted their job before taking this lock would deadlock.
    """
    Tenant.objects.select_for_update(no_key=True).filter(pk=tenant.pk).first()


def record_event(job: Job | int, kind: str, attempt: int, **detail: Any) -> None:
    job_id = job if isinstance(job, int) else job.pk
    JobEvent.objects.create(job_id=job_id, kind=kind, attempt=attempt, detail=detail)
