from __future__ import annotations

import datetime as dt

from celery import Task, shared_task
from django.conf import settings

from jobs.services import dispatch, idempotency, image_fetch, lifecycle, reconcile
from sdsaas.queues import (
    TASK_FETCH_INPUT_IMAGE,
    TASK_JOB_FAILED,
    TASK_JOB_PREEMPTED,
    TASK_JOB_PROGRESS,
    TASK_JOB_RECEIVED,
    TASK_JOB_STARTED,
    TASK_JOB_SUCCEEDED,
    TASK_PRUNE_RECORDS,
    TASK_RECONCILE_LOST,
    TASK_SWEEP_DEAD_LETTERS,
    TASK_SWEEP_UNPUBLISHED,
)
from tenants.services import rate_windows_prune


@shared_task(
    bind=True,
    name=TASK_FETCH_INPUT_IMAGE,
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=2,
    max_retries=3,
)
def fetch_input_image(self: Task, job_id: int) -> None:
    image_fetch.job_fetch_input_image(
        job_id=job_id, last_try=self.request.retries >= (self.max_retries or 0)
    )


@shared_task(name=TASK_SWEEP_DEAD_LETTERS, ignore_result=True)
def sweep_dead_letters() -> int:
    return lifecycle.jobs_fail_dead_lettered()


@shared_task(name=TASK_SWEEP_UNPUBLISHED, ignore_result=True)
def sweep_unpublished() -> int:
    return dispatch.jobs_sweep_unpublished(
        older_than=dt.timedelta(seconds=settings.SWEEP_UNPUBLISHED_AFTER)
    )


@shared_task(name=TASK_PRUNE_RECORDS, ignore_result=True)
def prune_records() -> dict[str, int]:
    return {
        "rate_windows": rate_windows_prune(),
        "idempotency_records": idempotency.idempotency_records_prune(),
    }


@shared_task(name=TASK_RECONCILE_LOST, ignore_result=True)
def reconcile_lost() -> dict[str, list[str]]:
    done = reconcile.jobs_reconcile_lost(
        silent_for=dt.timedelta(seconds=settings.RECONCILE_AFTER_S)
    )
    return {"unseen": done.unseen, "republished": done.republished, "failed": done.failed}


# Events from GPU workers. Each is safe to run twice: the services fence by attempt and status.


@shared_task(name=TASK_JOB_RECEIVED, ignore_result=True)
def job_received(job_id: str, attempt: int) -> None:
    lifecycle.job_mark_received(job_public_id=job_id, attempt=attempt)


@shared_task(name=TASK_JOB_STARTED, ignore_result=True)
def job_started(job_id: str, attempt: int, load_s: float) -> None:
    lifecycle.job_mark_started(job_public_id=job_id, attempt=attempt, load_s=load_s)


@shared_task(name=TASK_JOB_PROGRESS, ignore_result=True)
def job_progress(job_id: str, attempt: int, step: int, total: int) -> None:
    lifecycle.job_mark_progress(job_public_id=job_id, attempt=attempt, step=step, total=total)


@shared_task(name=TASK_JOB_SUCCEEDED, ignore_result=True)
def job_succeeded(
    job_id: str, attempt: int, output_keys: list[str], metrics: dict[str, float]
) -> None:
    lifecycle.job_mark_succeeded(
        job_public_id=job_id, attempt=attempt, output_keys=output_keys, metrics=metrics
    )


@shared_task(name=TASK_JOB_FAILED, ignore_result=True)
def job_failed(job_id: str, attempt: int, code: str, message: str) -> None:
    lifecycle.job_mark_failed(job_public_id=job_id, attempt=attempt, code=code, message=message)


@shared_task(name=TASK_JOB_PREEMPTED, ignore_result=True)
def job_preempted(job_id: str, attempt: int) -> None:
    lifecycle.job_mark_preempted(job_public_id=job_id, attempt=attempt)
