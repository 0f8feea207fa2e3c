from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import close_old_connections

from jobs.services import dispatch, idempotency, image_fetch, lifecycle, reconcile, scaling
from sdsaas.contract import (
    TASK_FETCH_INPUT_IMAGE,
    TASK_JOB_EVENTS,
    TASK_PRUNE_RECORDS,
    TASK_RECONCILE_LOST,
    TASK_SCALING_PUBLISH,
    TASK_SWEEP_DEAD_LETTERS,
    TASK_SWEEP_UNPUBLISHED,
    Event,
    JobFailed,
    JobPreempted,
    JobProgress,
    JobReceived,
    JobStarted,
    JobSucceeded,
    event_from_wire,
)
from tenants.services import rate_windows_prune

logger = logging.getLogger(__name__)


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
def sweep_dead_letters() -> None:
    reconcile.jobs_sweep_dead_lettered()


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


# Events from GPU workers, decoded by the contract (sdsaas/contract/): a task's keyword arguments
# are the event's fields, or, for events sent together, the list of them; fields a newer worker
# adds are ignored here. Each is safe to run twice: the services fence by attempt and status.


def _apply(event: Event) -> None:
    match event:
        case JobReceived():
            lifecycle.job_mark_received(
                job_public_id=event.job_id, attempt=event.attempt, contract_version=event.v
            )
        case JobStarted():
            lifecycle.job_mark_started(
                job_public_id=event.job_id, attempt=event.attempt, load_s=event.load_s
            )
        case JobProgress():
            lifecycle.job_mark_progress(
                job_public_id=event.job_id,
                attempt=event.attempt,
                step=event.step,
                total=event.total,
            )
        case JobSucceeded():
            lifecycle.job_mark_succeeded(
                job_public_id=event.job_id,
                attempt=event.attempt,
                output_keys=event.output_keys,
                metrics=event.metrics,
            )
        case JobFailed():
            lifecycle.job_mark_failed(
                job_public_id=event.job_id,
                attempt=event.attempt,
                code=event.code,
                message=event.message,
            )
        case JobPreempted():
            lifecycle.job_mark_preempted(job_public_id=event.job_id, attempt=event.attempt)
        case _:
            raise TypeError(f"no service applies {type(event).__name__}")


@shared_task(
    bind=True, name=TASK_JOB_EVENTS, ignore_result=True, max_retries=5, default_retry_delay=5
)
def job_events(self: Task, events: list[dict[str, Any]]) -> None:
    """Events a worker sent together, applied in order, each on its own (its own transaction).
    One that fails is logged and the others are still applied; then the task is tried again,
    later, with the ones that failed (its database connection closed if it broke, so the retry
    opens a new one). A kind this release does not know (a newer worker's) is skipped."""
    failed: list[dict[str, Any]] = []
    first_error: Exception | None = None
    for data in events:
        try:
            event = event_from_wire(data)
            if event is None:
                logger.warning("skipped a job event of unknown kind %r", data.get("kind"))
                continue
            _apply(event)
        except Exception as exc:
            logger.exception(
                "could not apply a %r event of job %r", data.get("kind"), data.get("job_id")
            )
            close_old_connections()
            failed.append(data)
            first_error = first_error or exc
    if failed:
        raise self.retry(kwargs={"events": failed}, exc=first_error)


@shared_task(name=JobReceived.TASK, ignore_result=True)
def job_received(**fields: Any) -> None:
    _apply(JobReceived.from_wire(fields))


@shared_task(name=JobStarted.TASK, ignore_result=True)
def job_started(**fields: Any) -> None:
    _apply(JobStarted.from_wire(fields))


@shared_task(name=JobProgress.TASK, ignore_result=True)
def job_progress(**fields: Any) -> None:
    _apply(JobProgress.from_wire(fields))


@shared_task(name=JobSucceeded.TASK, ignore_result=True)
def job_succeeded(**fields: Any) -> None:
    _apply(JobSucceeded.from_wire(fields))


@shared_task(name=JobFailed.TASK, ignore_result=True)
def job_failed(**fields: Any) -> None:
    _apply(JobFailed.from_wire(fields))


@shared_task(name=JobPreempted.TASK, ignore_result=True)
def job_preempted(**fields: Any) -> None:
    _apply(JobPreempted.from_wire(fields))
