"""What became of the soak's jobs, from the database: each job's end, its metering, and each
tenant's credits."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.soak.chaos import FINAL, Result


@dataclass
class Outcome:
    """The submitted jobs as the database has them at the end, and what is wrong with them."""

    jobs: dict[str, Any]  # public id -> Job, its tenant selected
    succeeded: list[Any]
    lost: list[Any]  # not final
    failed: Counter[str]  # "status:error_code" of the jobs that ended otherwise
    images: dict[str, int]  # public id -> images of a succeeded job (0 otherwise)
    double_metered: list[str]  # metered beyond its images, or final more than once
    unmetered: list[str]  # metered less than its images


@dataclass
class TenantRow:
    name: str
    jobs: int
    produced: int  # images of its succeeded jobs
    used: int | None  # its credit periods' sums
    reserved: int | None
    last: float  # time.time() of its last completion, 0 for none


def job_outcome(result: Result) -> Outcome:
    from jobs.models import Job, JobEvent
    from tenants.models import UsageRecord

    jobs = {
        job.public_id: job
        for job in Job.objects.select_related("tenant").filter(public_id__in=result.submitted)
    }
    ids = [job.pk for job in jobs.values()]
    usage = count_per_job(UsageRecord.objects.filter(job_id__in=ids))
    finals = count_per_job(JobEvent.objects.filter(job_id__in=ids, kind__in=FINAL))
    succeeded = [job for job in jobs.values() if job.status == Job.Status.SUCCEEDED]
    images = {
        public_id: len(job.output_keys) if job.status == Job.Status.SUCCEEDED else 0
        for public_id, job in jobs.items()
    }
    return Outcome(
        jobs=jobs,
        succeeded=succeeded,
        lost=[job for job in jobs.values() if job.status not in FINAL],
        failed=Counter(
            f"{job.status}:{job.error_code}"
            for job in jobs.values()
            if job.status in FINAL and job.status != Job.Status.SUCCEEDED
        ),
        images=images,
        double_metered=[
            public_id
            for public_id in jobs
            if usage[public_id] > images[public_id] or finals[public_id] > 1
        ],
        unmetered=[public_id for public_id in jobs if usage[public_id] < images[public_id]],
    )


def count_per_job(rows: Any) -> Counter[str]:
    """How many of `rows` (a queryset of a model with a `job`) each job has, by public id."""
    from django.db.models import Count

    return Counter(dict(rows.values_list("job__public_id").annotate(n=Count("id"))))


def tenant_credits(result: Result, outcome: Outcome) -> tuple[list[TenantRow], list[str]]:
    """Each tenant's row of the table, and the tenants whose credits do not add up: `used`
    must equal the images produced, and nothing may be left `reserved`."""
    from django.db.models import Sum

    from tenants.models import CreditPeriod

    rows, mismatch = [], []
    for tenant in sorted(set(result.submitted.values())):
        periods = CreditPeriod.objects.filter(tenant__name=tenant).aggregate(
            used=Sum("used"), reserved=Sum("reserved")
        )
        mine = [job for job in outcome.jobs.values() if job.tenant.name == tenant]
        produced = sum(outcome.images[job.public_id] for job in mine)
        if (periods["used"] or 0) != produced or (periods["reserved"] or 0) != 0:
            mismatch.append(tenant)
        last = max((job.completed_at.timestamp() for job in mine if job.completed_at), default=0)
        used, reserved = periods["used"], periods["reserved"]
        rows.append(TenantRow(tenant, len(mine), produced, used, reserved, last))
    return rows, mismatch
