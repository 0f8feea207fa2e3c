"""The job state machine: the one place where a job's final state is decided.

Events from GPU workers (received, started, progress, succeeded, failed, preempted) and cancel;
the reconciler and the dead-letter sweep (jobs/services/reconcile.py) fail jobs through
`job_fail`. Each is fenced by attempt and status, so duplicates and late events change nothing;
a job is finished once (`_finish`), with its credits metered or released and the tenant's next
job admitted. Each change a client sees is announced once (jobs/announcements.py).

Locks the tenant row first, then job and credit rows (`jobs.services.common.lock_tenant`).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from jobs import selectors
from jobs.announcements import JobStateChange, job_state_changed
from jobs.models import Job
from jobs.services.common import lock_tenant, record_event
from jobs.services.dispatch import jobs_admit
from sdsaas.contract import FailureCode, cancel_marker_key, job_output_prefix
from sdsaas.errors import Conflict
from tenants.models import Tenant
from tenants.services import credits_release, usage_record_images

logger = logging.getLogger(__name__)


def job_fail(
    job: Job, *, code: FailureCode, message: str, attempt: int | None = None, fence: Q | None = None
) -> bool:
    fields = {"error_code": code, "error_message": message[:2000]}
    return _finish(
        job=job, status=Job.Status.FAILED, attempt=attempt, fields=fields, produced=0, fence=fence
    )


def _finish(
    *,
    job: Job,
    status: str,
    attempt: int | None,
    fields: dict[str, Any],
    produced: int,
    fence: Q | None = None,
) -> bool:
    """Move a job to a final state once; meter or release its credits; admit the next job.

    `fence` narrows which rows may change (on top of "not final" and the attempt).
    """
    lock_tenant(job.tenant)
    fence = Q(pk=job.pk) & ~Q(status__in=Job.FINAL) & (fence or Q())
    if attempt is not None:
        fence &= Q(attempt__lte=attempt)
    now = timezone.now()
    changed = Job.objects.filter(fence).update(status=status, completed_at=now, **fields)
    if not changed:
        return False
    if produced:
        usage_record_images(
            tenant=job.tenant,
            job_id=job.pk,
            month=job.credit_month,
            reserved=job.credits_reserved,
            produced=produced,
            model_slug=job.model.slug,
        )
    else:
        credits_release(tenant=job.tenant, month=job.credit_month, amount=job.credits_reserved)
    record_event(
        job, status, attempt or job.attempt, **{k: v for k, v in fields.items() if "error" in k}
    )
    _announce(job, status, attempt or job.attempt, at=now)
    jobs_admit(tenant=job.tenant)
    return True


def _announce(
    job: Job,
    status: str,
    attempt: int,
    *,
    at: dt.datetime,
    progress: tuple[int, int] | None = None,
) -> None:
    change = JobStateChange(
        job_pk=job.pk,
        job_id=job.public_id,
        tenant_id=job.tenant_id,
        status=status,
        attempt=attempt,
        at=at,
        progress=progress,
    )
    job_state_changed(change)


@transaction.atomic
def job_cancel(*, tenant: Tenant, job_public_id: str) -> Job:
    """Cancel a job that is not final; canceling a canceled job changes nothing."""
    lock_tenant(tenant)
    job = selectors.job_get(tenant=tenant, public_id=job_public_id)
    if job.status == Job.Status.CANCELED:
        return job
    if job.is_final:
        raise Conflict(f"Job {job.public_id} is already {job.status}.")
    admitted = job.status != Job.Status.QUEUED
    _finish(job=job, status=Job.Status.CANCELED, attempt=None, fields={}, produced=0)
    if admitted:  # its message may be in a queue or on a worker: tell the worker
        marker = cancel_marker_key(job_output_prefix(job.tenant_id, job.public_id))
        transaction.on_commit(lambda: _write_cancel_marker(marker))
    job.refresh_from_db()
    return job


def _write_cancel_marker(key: str) -> None:
    try:
        default_storage.save(key, ContentFile(b"canceled"))
    except Exception as exc:  # the job is canceled regardless; its worker finishes in vain
        logger.warning("could not write cancel marker %s: %s", key, exc)


def _job_for_event(job_public_id: str) -> Job | None:
    return (
        Job.objects.select_related("tenant__plan", "model").filter(public_id=job_public_id).first()
    )


@transaction.atomic
def job_mark_received(*, job_public_id: str, attempt: int, contract_version: int = 1) -> bool:
    """A worker received the job's message as attempt `attempt`: one `received` event per delivery.

    Sent before the model is loaded, so deliveries that kill their worker count too. A newer
    attempt takes the job back to `starting` (its previous worker is gone). Older attempts, a
    duplicate of this event and final jobs change nothing.
    """
    # The row lock makes a concurrent duplicate wait, then find the event below.
    job = (
        Job.objects.select_for_update()
        .filter(public_id=job_public_id, status__in=Job.IN_FLIGHT, attempt__lte=attempt)
        .first()
    )
    if job is None or job.events.filter(kind="received", attempt=attempt).exists():
        return False
    if attempt > job.attempt:
        Job.objects.filter(pk=job.pk).update(
            status=Job.Status.STARTING, attempt=attempt, progress_step=0
        )
    # The worker's contract version: during a rolling deploy, which release ran each delivery.
    record_event(job, "received", attempt, contract=contract_version)
    return True


@transaction.atomic
def job_mark_started(*, job_public_id: str, attempt: int, load_s: float) -> bool:
    """A worker began attempt `attempt`. Older attempts and final jobs change nothing."""
    job = _job_for_event(job_public_id)
    if job is None:
        return False
    newer = Q(attempt__lt=attempt) | Q(attempt=attempt, status=Job.Status.STARTING)
    now = timezone.now()
    changed = Job.objects.filter(newer, pk=job.pk, status__in=Job.IN_FLIGHT).update(
        status=Job.Status.PROCESSING,
        attempt=attempt,
        started_at=now,
        metrics={**job.metrics, "load_s": load_s},
    )
    if changed:
        record_event(job, "started", attempt, load_s=load_s)
        _announce(job, Job.Status.PROCESSING, attempt, at=now)
    return bool(changed)


@transaction.atomic
def job_mark_progress(*, job_public_id: str, attempt: int, step: int, total: int) -> bool:
    changed = (
        Job.objects.filter(public_id=job_public_id, status=Job.Status.PROCESSING, attempt=attempt)
        .exclude(progress_step=step, progress_total=total)
        .update(progress_step=step, progress_total=total)
    )
    if changed:
        job = Job.objects.get(public_id=job_public_id)
        _announce(job, Job.Status.PROCESSING, attempt, at=timezone.now(), progress=(step, total))
    return bool(changed)


@transaction.atomic
def job_mark_succeeded(
    *, job_public_id: str, attempt: int, output_keys: list[str], metrics: dict[str, float]
) -> bool:
    """Record the outputs and meter usage, exactly once per job whatever the duplicates.

    Only keys of the job's own output prefix count, each once, at most its reserved images: a
    worker that reports more is not believed (another tenant's keys would be presigned for this
    one, and images beyond the reservation metered past the plan). None left: the job failed.
    """
    job = _job_for_event(job_public_id)
    if job is None:
        return False
    prefix = job_output_prefix(job.tenant_id, job.public_id)
    own = list(dict.fromkeys(key for key in output_keys if key.startswith(prefix)))
    keys = own[: job.credits_reserved]
    if len(keys) != len(output_keys):
        logger.warning(
            "job %s attempt %s: %d output keys reported, %d kept (its own, at most %d)",
            job_public_id,
            attempt,
            len(output_keys),
            len(keys),
            job.credits_reserved,
        )
    if not keys:
        message = "The worker reported no image of this job."
        return job_fail(job, code=FailureCode.INTERNAL_ERROR, message=message, attempt=attempt)
    # The metrics as they stand under the job's row lock (the tenant's first): a `started`
    # applied meanwhile by another control worker keeps its load_s.
    lock_tenant(job.tenant)
    before = Job.objects.select_for_update().filter(pk=job.pk).values_list("metrics", flat=True)
    return _finish(
        job=job,
        status=Job.Status.SUCCEEDED,
        attempt=attempt,
        fields={
            "output_keys": keys,
            "metrics": {**before[0], **metrics},
            "progress_step": job.input["steps"],
            "progress_total": job.input["steps"],
        },
        produced=len(keys),
    )


@transaction.atomic
def job_mark_preempted(*, job_public_id: str, attempt: int) -> bool:
    """The worker of `attempt` stopped before finishing: the job runs again as attempt + 1 (the
    worker's copy of its message, or SQS's next delivery of it). The row waits at that attempt:
    what the stopped delivery still reports is fenced out, and the copy's deliveries, as any live
    message's, run as attempts below the row's + SQS_MAX_RECEIVES, where the reconciler publishes
    a lost job again."""
    job = _job_for_event(job_public_id)
    if job is None:
        return False
    changed = Job.objects.filter(pk=job.pk, status__in=Job.IN_FLIGHT, attempt=attempt).update(
        status=Job.Status.STARTING, attempt=attempt + 1, progress_step=0
    )
    if changed:
        record_event(job, "preempted", attempt)
    return bool(changed)


@transaction.atomic
def job_mark_failed(*, job_public_id: str, attempt: int, code: FailureCode, message: str) -> bool:
    job = _job_for_event(job_public_id)
    if job is None:
        return False
    return job_fail(job, code=code, message=message, attempt=attempt)
