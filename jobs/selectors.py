from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.core.files.storage import default_storage
from django.db import connection
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


# The poll's lookup, written out: Django compiling this query cost about as much as PostgreSQL
# running it (0.55 ms through the ORM against 0.33 ms written out, bench/README.md), on every
# `GET /v1/jobs/{id}`. The model's slug comes with the row (`model_slug`), not the model.
_JOB_OF_TENANT = (
    f"SELECT j.*, m.slug AS model_slug FROM {Job._meta.db_table} j"
    f" JOIN {DiffusionModel._meta.db_table} m ON m.id = j.model_id"
    " WHERE j.tenant_id = %s AND j.public_id = %s"
)


def job_get(*, tenant: Tenant, public_id: str) -> Job:
    """The tenant's job; another tenant's job is NotFound, the same as a missing one."""
    for job in Job.objects.raw(_JOB_OF_TENANT, [tenant.pk, public_id]):
        return job  # public_id is unique: one row at most
    raise NotFound(f"No job {public_id!r}.")


def job_list(
    *, tenant: Tenant, status: str | None = None, model_slug: str | None = None
) -> QuerySet[Job]:
    jobs = Job.objects.select_related("model").filter(tenant=tenant)
    if status:
        jobs = jobs.filter(status=status)
    if model_slug:
        jobs = jobs.filter(model__slug=model_slug)
    return jobs


def jobs_in_flight_count(*, tenant: Tenant, up_to: int | None = None) -> int:
    """How many of the tenant's jobs are admitted and not final; counted only `up_to` that many
    (admission needs to know no more than whether the plan's cap is reached)."""
    jobs = Job.objects.filter(tenant=tenant, status__in=Job.IN_FLIGHT)
    return (jobs if up_to is None else jobs.order_by()[:up_to]).count()


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


# A queued job's position is counted up to this many jobs ahead of it, so that what a poll costs
# does not grow with its tenant's backlog; a job further back shows this number.
QUEUE_POSITION_CAP = 1000


def job_queue_position(*, job: Job) -> int | None:
    """0-based position among the tenant's jobs waiting for admission, up to
    QUEUE_POSITION_CAP; None once admitted."""
    if job.status != Job.Status.QUEUED:
        return None
    return _queued_ahead(tenant_id=job.tenant_id, job_ids=[job.id])[job.id]


def job_queue_positions(*, tenant: Tenant, jobs: Iterable[Job]) -> dict[int, int]:
    """`job_queue_position` of each of the tenant's queued `jobs`, by job id, in one query (none
    when no job is queued), so that a list page costs the same whatever its size. Jobs that are
    not queued, or not the tenant's, have no entry."""
    queued = [
        job.id for job in jobs if job.status == Job.Status.QUEUED and job.tenant_id == tenant.id
    ]
    return _queued_ahead(tenant_id=tenant.id, job_ids=queued) if queued else {}


# A bounded count per job, in one statement: the (tenant, status, id) index read backwards from
# each job, at most QUEUE_POSITION_CAP entries.
_QUEUED_AHEAD = (
    "SELECT j.id, (SELECT COUNT(*) FROM (SELECT 1 FROM {table} q WHERE q.tenant_id = j.tenant_id"
    " AND q.status = %s AND q.id < j.id LIMIT %s) ahead) FROM {table} j"
    " WHERE j.tenant_id = %s AND j.id IN ({ids})"
)


def _queued_ahead(*, tenant_id: int, job_ids: list[int]) -> dict[int, int]:
    """How many of the tenant's queued jobs are ahead of each of `job_ids` (up to the cap)."""
    sql = _QUEUED_AHEAD.format(table=Job._meta.db_table, ids=", ".join(["%s"] * len(job_ids)))
    with connection.cursor() as cursor:
        cursor.execute(sql, [Job.Status.QUEUED.value, QUEUE_POSITION_CAP, tenant_id, *job_ids])
        return {job_id: ahead for job_id, ahead in cursor.fetchall()}


def _seconds_between(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def job_output_urls(*, job: Job) -> list[str] | None:
    """Presigned URLs of the job's images (they expire after SDSAAS_OUTPUT_URL_TTL)."""
    if not job.output_keys:
        return None
    return [default_storage.url(key) for key in job.output_keys]


def job_metrics(*, job: Job) -> dict[str, float | None]:
    """The public metrics, in seconds: queue and total from the job's timestamps."""
    return {
        "queue_s": _seconds_between(job.created_at, job.started_at),
        "load_s": job.metrics.get("load_s"),
        "inference_s": job.metrics.get("inference_s"),
        "total_s": _seconds_between(job.created_at, job.completed_at),
    }


def upload_get(*, tenant: Tenant, public_id: str) -> Upload | None:
    return Upload.objects.filter(tenant=tenant, public_id=public_id).first()


def job_events(*, job: Job) -> QuerySet[JobEvent]:
    """The job's history, oldest first. Not tenant-scoped: for staff pages only."""
    # By id, not created_at: ids follow the order of the writes even when clocks tie.
    return JobEvent.objects.filter(job=job).order_by("id")
