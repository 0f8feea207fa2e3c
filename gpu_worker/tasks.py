"""The GPU Celery task: thin. The message is self-contained; the attempt comes from SQS."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_shutting_down
from celery.worker.request import Request
from django.conf import settings
from django.core.files.storage import default_storage

from gpu_worker.app import app
from gpu_worker.events import send_event
from gpu_worker.heartbeat import VisibilityHeartbeat
from gpu_worker.retry import is_transient
from gpu_worker.runner import run_job, time_limit_s, timeout_message
from gpu_worker.watchdog import STOP, Reason
from sdsaas.broker.sqs import model_queue_name, sqs_client
from sdsaas.contract import (
    TASK_GPU_GENERATE,
    FailureCode,
    JobFailed,
    JobMessage,
    JobPreempted,
    RunOutcome,
)

logger = logging.getLogger(__name__)


class SqsRequest(Request):
    """Keeps what Celery drops from SQS's delivery info: the receive count and the receipt; and
    how to take the queue's next message ahead (sdsaas/broker/transport.py: `take_ahead`)."""

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        raw = message.delivery_info or {}
        sqs_message = raw.get("sqs_message") or {}
        count = sqs_message.get("Attributes", {}).get("ApproximateReceiveCount", "1")
        delivery_info: dict[str, Any] = self.delivery_info  # type: ignore[assignment]
        delivery_info["receive_count"] = int(count)
        delivery_info["receipt_handle"] = sqs_message.get("ReceiptHandle")
        delivery_info["queue_url"] = raw.get("sqs_queue")
        delivery_info["take_ahead"] = getattr(message.channel, "take_ahead", None)


class GenerateTask(Task):
    Request = "gpu_worker.tasks:SqsRequest"

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job = kwargs["job"]  # as it came: it may be what failed to decode
        attempt = int(job["attempt"]) + receive_count(self.request.delivery_info) - 1
        text = f"The worker failed: {exc.__class__.__name__}."
        send_event(JobFailed(job["job_id"], attempt, code=FailureCode.INTERNAL_ERROR, message=text))


def receive_count(delivery_info: Any) -> int:
    return int((delivery_info or {}).get("receive_count", 1))


def take_ahead_of(delivery_info: Any) -> Callable[[], None] | None:
    """How to take the queue's next message ahead of this one's report (None outside SQS)."""
    take_ahead: Callable[[], None] | None = (delivery_info or {}).get("take_ahead")
    return take_ahead


def attempt_of(message: JobMessage, delivery_info: Any) -> int:
    """The dispatch attempt plus SQS redeliveries of this message."""
    return message.attempt + receive_count(delivery_info) - 1


@worker_shutting_down.connect
def _start_stop_grace(**_: Any) -> None:
    """Celery's warm shutdown takes no new message and waits for the running job; we bound it."""
    STOP.begin(settings.GPU_STOP_GRACE_S)
    logger.info("stopping: the running job has %ss to finish", settings.GPU_STOP_GRACE_S)


# After S3 or SQS trouble that outlasted the runner's patience, the job is tried again later.
RETRY_AFTER_S = 60


def sqs_message_of(delivery_info: Any) -> tuple[str, str] | None:
    """The queue URL and receipt handle of the message being run (None outside an SQS delivery)."""
    delivery_info = delivery_info or {}
    queue_url, receipt_handle = delivery_info.get("queue_url"), delivery_info.get("receipt_handle")
    return (queue_url, receipt_handle) if queue_url and receipt_handle else None


def hand_back(delivery_info: Any, *, after_s: int) -> None:
    """Let SQS deliver the message again in `after_s` seconds instead of after its timeout.

    The next receive counts: the job runs as the next attempt, and a job handed back on every
    delivery is dead-lettered like one that kills its worker. Best effort: if SQS is away too,
    the message comes back after its visibility timeout all the same.
    """
    message = sqs_message_of(delivery_info)
    if message is None:
        return
    queue_url, receipt_handle = message
    try:
        sqs_client().change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=after_s
        )
    except Exception as exc:
        logger.warning("could not hand the message back early: %s", exc)


def held(delivery_info: Any) -> contextlib.AbstractContextManager[VisibilityHeartbeat | None]:
    """Keeps the message invisible while the job runs, by the heartbeat of the settings."""
    message = sqs_message_of(delivery_info)
    if message is None:
        return contextlib.nullcontext()
    queue_url, receipt_handle = message
    return VisibilityHeartbeat(
        # One try per beat, with short timeouts: a failed beat is tried again at the next one.
        sqs_client(fail_fast=True),
        queue_url=queue_url,
        receipt_handle=receipt_handle,
        visibility_s=settings.SQS_VISIBILITY_TIMEOUT,
        interval_s=settings.GPU_HEARTBEAT_S,
        ceiling_s=settings.GPU_JOB_TIME_LIMIT_S,
    )


@app.task(
    bind=True,
    base=GenerateTask,
    name=TASK_GPU_GENERATE,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def generate(self: Task, job: dict[str, Any]) -> RunOutcome:
    message = JobMessage.from_wire(job)
    attempt = attempt_of(message, self.request.delivery_info)
    logger.info("job %s attempt %s (contract v%s)", message.job_id, attempt, message.v)
    delivery_info = self.request.delivery_info
    try:
        # The heartbeat stops when the job ends, before any hand-back, ack or reject below.
        with held(delivery_info) as heartbeat:
            abandon = partial(abandon_job, message, attempt, delivery_info, heartbeat)
            outcome = run_job(
                message,
                attempt=attempt,
                storage=default_storage,
                abandon=abandon,
                work_done=take_ahead_of(delivery_info),
            )
    except Exception as exc:
        if not is_transient(exc):
            raise
        # Not Celery's retry: it publishes a copy whose receive count starts again at 1, so the
        # copy would run under an attempt older than the one the job row holds, and be fenced.
        hand_back(self.request.delivery_info, after_s=RETRY_AFTER_S)
        raise Reject(f"transient: {exc.__class__.__name__}", requeue=False) from exc
    if outcome == RunOutcome.PREEMPTED and not requeue_as_next_attempt(message, attempt):
        hand_back(self.request.delivery_info, after_s=0)
        # Neither acked nor deleted (the model queues have a redrive policy, so kombu keeps a
        # rejected message): SQS redelivers it, and the next receive is attempt + 1.
        raise Reject("preempted: the worker is stopping", requeue=False)
    return outcome


def abandon_job(
    message: JobMessage,
    attempt: int,
    delivery_info: Any,
    heartbeat: VisibilityHeartbeat | None,
    reason: Reason,
) -> NoReturn:
    """Settle a job that did not end in-process when it had to, then end this process.

    Runs on the job's watchdog thread (gpu_worker/watchdog.py) while the job's work may still
    be running: what the job would have reported, it reports here, and its message is settled
    as the task would have, so that nothing waits for a visibility timeout. Then the process
    ends: a stopping worker exits; any other starts again in place (same PID, fresh memory).
    """
    if heartbeat is not None:
        heartbeat.stop()  # before the message is settled: a late beat must not hide it again
    job_id = message.job_id
    if reason == "timeout":
        text = timeout_message(time_limit_s(message))
        send_event(JobFailed(job_id, attempt, code=FailureCode.TIMEOUT, message=text))
        delete_message(delivery_info)
    elif reason == "preempted":
        send_event(JobPreempted(job_id, attempt))
        if requeue_as_next_attempt(message, attempt):
            delete_message(delivery_info)
        else:
            hand_back(delivery_info, after_s=0)
    else:  # canceled: the control plane already made the job final
        delete_message(delivery_info)
    logger.warning("job %s abandoned (%s)", job_id, reason)
    end_process(restart=STOP.at is None)


def delete_message(delivery_info: Any) -> None:
    """Ack the message of the job being run, outside Celery (best effort, as `hand_back`)."""
    message = sqs_message_of(delivery_info)
    if message is None:
        return
    queue_url, receipt_handle = message
    try:
        sqs_client().delete_message(QueueUrl=queue_url, ReceiptHandle=receipt_handle)
    except Exception as exc:
        logger.warning("could not delete the message of an abandoned job: %s", exc)


def end_process(*, restart: bool) -> NoReturn:
    """Exit, or start this worker again in the same process (exec: same PID, same arguments).

    Nothing of the old process survives an exec: its threads, its model and GPU memory go. The
    new worker loads its model again at its first job.
    """
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    if not restart:
        os._exit(0)
    logger.warning("restarting the worker process")
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def requeue_as_next_attempt(message: JobMessage, attempt: int) -> bool:
    """Send the job again as attempt + 1; then this message is acked as done.

    A fresh message, not a redelivery: a preemption is not the job's fault, so it must not use
    up the receives after which SQS dead-letters a job. False if SQS cannot take it now.
    """
    try:
        app.send_task(
            TASK_GPU_GENERATE,
            kwargs={"job": message.as_attempt(attempt + 1).to_wire()},
            queue=model_queue_name(message.model.slug),
        )
    except Exception as exc:
        logger.warning("could not requeue preempted job %s: %s", message.job_id, exc)
        return False
    return True
