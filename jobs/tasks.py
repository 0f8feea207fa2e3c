from __future__ import annotations

import datetime as dt
from typing import Any

from celery import Task, shared_task
from django.conf import settings

from jobs.services import dispatch, idempotency, image_fetch, lifecycle, reconcile, scaling
from sdsaas.contract import (
    TASK_FETCH_INPUT_IMAGE,
    TASK_PRUNE_RECORDS,
    TASK_RECONCILE_LOST,
    TASK_SCALING_PUBLISH,
    TASK_SWEEP_DEAD_LETTERS,
    TASK_SWEEP_UNPUBLISHED,
    JobFailed,
    JobPreempted,
    JobProgress,
    JobReceived,
    JobStarted,
    JobSucceeded,
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
def fetch_input_image(self: Task, job_pk: int) -> None:
    image_fetch.job_fetch_input_image(
        job_pk=job_pk, last_try=self.request.retries >= (self.max_retries or 0)
    )


@shared_task(name=TASK_SWEEP_DEAD_LETTERS, ignore_result=True)
def sweep_dead_letters() -> int:
    return lifecycle.jobs_fail_dead_lettered()


@shared_task(name=TASK_SWEEP_UNPUBLISHED, ignore_result=True)
def sweep_unpublished() -> int:
    return dispatch.jobs_sweep_unpublished(
        older_than=dt.timedelta(seconds=settings.SWEEP_UNPUBLISHED_AFTER)
    )


@shared_task(name=TASK_SCALING_PUBLISH, ignore_result=True)
def scaling_publish() -> int:
    return len(scaling.pools_publish())


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


# Events from GPU workers, decoded by the contract (sdsaas/contract/): their keyword arguments
# are the event's fields, and fields a newer worker adds are ignored here. Each is safe to run
# twice: the services fence by attempt and status.


@shared_task(name=JobReceived.TASK, ignore_result=True)
def job_received(**fields: Any) -> None:
    event = JobReceived.from_wire(fields)
    lifecycle.job_mark_received(
        job_public_id=event.job_id, attempt=event.attempt, contract_version=event.v
    )


@shared_task(name=JobStarted.TASK, ignore_result=True)
def job_started(**fields: Any) -> None:
    event = JobStarted.from_wire(fields)
    lifecycle.job_mark_started(
        job_public_id=event.job_id, attempt=event.attempt, load_s=event.load_s
    )


@shared_task(name=JobProgress.TASK, ignore_result=True)
def job_progress(**fields: Any) -> None:
    event = JobProgress.from_wire(fields)
    lifecycle.job_mark_progress(
        job_public_id=event.job_id, attempt=event.attempt, step=event.step, total=event.total
    )


@shared_task(name=JobSucceeded.TASK, ignore_result=True)
def job_succeeded(**fields: Any) -> None:
    event = JobSucceeded.from_wire(fields)
    lifecycle.job_mark_succeeded(
        job_public_id=event.job_id,
        attempt=event.attempt,
        output_keys=event.output_keys,
        metrics=event.metrics,
    )


@shared_task(name=JobFailed.TASK, ignore_result=True)
def job_failed(**fields: Any) -> None:
    event = JobFailed.from_wire(fields)
    lifecycle.job_mark_failed(
        job_public_id=event.job_id, attempt=event.attempt, code=event.code, message=event.message
    )


@shared_task(name=JobPreempted.TASK, ignore_result=True)
def job_preempted(**fields: Any) -> None:
    event = JobPreempted.from_wire(fields)
    lifecycle.job_mark_preempted(job_public_id=event.job_id, attempt=event.attempt)
