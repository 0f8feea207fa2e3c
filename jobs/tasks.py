from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections

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


# A GPU worker's event is the only word of what its job did (the worker has deleted its message):
# one that cannot be applied now (the database away for a failover, one to two minutes on RDS
# Multi-AZ) is tried again after 5, 10, 20, 40, then every 60 s: about 5 minutes in all. Any
# other error (a bug, a row that breaks a constraint) would fail again: it is not retried.
EVENT_MAX_RETRIES = 8
TRANSIENT = (OperationalError, InterfaceError)


def _event_retry(task: Task, exc: Exception, **kwargs: Any) -> Exception:
    """The retry of an event task that failed; its database connection closed if it broke, so
    that the retry opens a new one."""
    close_old_connections()
    countdown = min(60, 5 * 2**task.request.retries)
    return task.retry(exc=exc, countdown=countdown, **kwargs)


@shared_task(bind=True, name=TASK_JOB_EVENTS, ignore_result=True, max_retries=EVENT_MAX_RETRIES)
def job_events(self: Task, events: list[dict[str, Any]]) -> None:
    """Events a worker sent together, applied in order, each on its own (its own transaction).
    One that fails is logged and the others are still applied; then the task is tried again,
    later, with those that failed for a passing reason (`_event_retry`). A kind this release does
    not know (a newer worker's) is skipped."""
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
            if isinstance(exc, TRANSIENT):
                failed.append(data)
                first_error = first_error or exc
    if first_error is not None:
        raise _event_retry(self, first_error, kwargs={"events": failed})


def _apply_one(task: Task, event: Callable[[], Event]) -> None:
    """An event sent alone, as its own task: applied, or tried again later as `job_events`'."""
    try:
        _apply(event())
    except TRANSIENT as exc:
        raise _event_retry(task, exc) from exc


@shared_task(bind=True, name=JobReceived.TASK, ignore_result=True, max_retries=EVENT_MAX_RETRIES)
def job_received(self: Task, **fields: Any) -> None:
    _apply_one(self, lambda: JobReceived.from_wire(fields))


@shared_task(bind=True, name=JobStarted.TASK, ignore_result=True, max_retries=EVENT_MAX_RETRIES)
def job_started(self: Task, **fields: Any) -> None:
    _apply_one(self, lambda: JobStarted.from_wire(fields))


@shared_task(bind=True, name=JobProgress.TASK, ignore_result=True, max_retries=EVENT_MAX_RETRIES)
def job_progress(self: Task, **fields: Any) -> None:
    _apply_one(self, lambda: JobProgress.from_wire(fields))


@shared_task(bind=True, name=JobSucceeded.TASK, ignore_result=True, max_retries=EVENT_MAX_RETRIES)
def job_succeeded(self: Task, **fields: Any) -> None:
    _apply_one(self, lambda: JobSucceeded.from_wire(fields))


@shared_task(bind=True, name=JobFailed.TASK, ignore_result=True, max_retries=EVENT_MAX_RETRIES)
def job_failed(self: Task, **fields: Any) -> None:
    _apply_one(self, lambda: JobFailed.from_wire(fields))


@shared_task(bind=True, name=JobPreempted.TASK, ignore_result=True, max_retries=EVENT_MAX_RETRIES)
def job_preempted(self: Task, **fields: Any) -> None:
    _apply_one(self, lambda: JobPreempted.from_wire(fields))
