from __future__ import annotations

import datetime as dt

from django.db.models import Exists, OuterRef, Q, QuerySet

from jobs.models import DiffusionModel, Job, JobEvent, LoraAdapter, Upload
from sdsaas.errors import NotFound
from tenants.models import Tenant


def _visible_to(tenant: Tenant) -> Q:
    return Q(enabled=True) & (Q(owner__isnull=True) | Q(owner=tenant))


def model_list(*, tenant: Tenant) -> QuerySet[DiffusionModel]:
    return DiffusionModel.objects.filter(_visible_to(tenant)).order_by("slug")


def model_get(*, tenant: Tenant, slug: str) -> DiffusionModel | None:
    return model_list(tenant=tenant).filter(slug=slug).first()


def lora_list(*, tenant: Tenant) -> QuerySet[LoraAdapter]:
    return LoraAdapter.objects.filter(_visible_to(tenant)).order_by("slug")


def job_get(*, tenant: Tenant, public_id: str) -> Job:
    """The tenant's job; another tenant's job is NotFound, the same as a missing one."""
    job = Job.objects.select_related("model").filter(tenant=tenant, public_id=public_id).first()
    if job is None:
        raise NotFound(f"No job {public_id!r}.")
    return job


def job_list(
    *, tenant: Tenant, status: str | None = None, model_slug: str | None = None
) -> QuerySet[Job]:
    jobs = Job.objects.select_related("model").filter(tenant=tenant)
    if status:
        jobs = jobs.filter(status=status)
    if model_slug:
        jobs = jobs.filter(model__slug=model_slug)
    return jobs


def jobs_in_flight_count(*, tenant: Tenant) -> int:
    return Job.objects.filter(tenant=tenant, status__in=Job.IN_FLIGHT).count()


def jobs_silent_in_flight(*, since: dt.datetime) -> QuerySet[Job]:
    """Admitted, published jobs with no sign of life after `since`: neither admitted, published,
    nor any event (received, started, republished...) since, the reconciler's own `unseen` marks
    aside. Progress writes no event: see `jobs_reconcile_lost` for why that is safe.
    Not tenant-scoped: for the reconciler.
    """
    recent_event = JobEvent.objects.filter(job=OuterRef("pk"), created_at__gt=since).exclude(
        kind="unseen"
    )
    return Job.objects.filter(
        ~Exists(recent_event),
        status__in=Job.IN_FLIGHT,
        admitted_at__lte=since,
        published_at__lte=since,
    )


def job_queue_position(*, job: Job) -> int | None:
    """0-based position among the tenant's jobs waiting for admission; None once admitted."""
    if job.status != Job.Status.QUEUED:
        return None
    return Job.objects.filter(
        tenant_id=job.tenant_id, status=Job.Status.QUEUED, id__lt=job.id
    ).count()


def upload_get(*, tenant: Tenant, public_id: str) -> Upload | None:
    return Upload.objects.filter(tenant=tenant, public_id=public_id).first()


def job_events(*, job: Job) -> QuerySet[JobEvent]:
    """The job's history, oldest first. Not tenant-scoped: for staff pages only."""
    # By id, not created_at: ids follow the order of the writes even when clocks tie.
    return JobEvent.objects.filter(job=job).order_by("id")
