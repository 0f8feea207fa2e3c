"""The GPU Celery task: thin. The message is self-contained; the attempt comes from SQS."""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError
from celery import Task
from celery.worker.request import Request
from django.core.files.storage import default_storage
from kombu.exceptions import OperationalError

from gpu_worker.runner import run_job, send_event
from sdsaas.celery import app
from sdsaas.queues import TASK_GPU_GENERATE, TASK_JOB_FAILED

logger = logging.getLogger(__name__)

# Storage or queue trouble: retrying can help. Anything else fails the job at once.
TRANSIENT_ERRORS = (BotoCoreError, ConnectionError, TimeoutError, OperationalError)


class SqsRequest(Request):
    """Keeps SQS's ApproximateReceiveCount, which Celery drops from delivery_info."""

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        sqs_message = (message.delivery_info or {}).get("sqs_message") or {}
        count = sqs_message.get("Attributes", {}).get("ApproximateReceiveCount", "1")
        delivery_info: dict[str, Any] = self.delivery_info  # type: ignore[assignment]
        delivery_info["receive_count"] = int(count)


class GenerateTask(Task):
    Request = "gpu_worker.tasks:SqsRequest"

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job = kwargs["job"]
        send_event(
            TASK_JOB_FAILED,
            job_id=job["job_id"],
            attempt=attempt_of(job, self.request.delivery_info),
            code="internal_error",
            message=f"The worker failed: {exc.__class__.__name__}.",
        )


def attempt_of(job: dict[str, Any], delivery_info: Any) -> int:
    """The dispatch attempt plus SQS redeliveries of this message."""
    receive_count = int((delivery_info or {}).get("receive_count", 1))
    return int(job["attempt"]) + receive_count - 1


@app.task(
    bind=True,
    base=GenerateTask,
    name=TASK_GPU_GENERATE,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=2,
    max_retries=3,
    ignore_result=True,
)
def generate(self: Task, job: dict[str, Any]) -> str:
    attempt = attempt_of(job, self.request.delivery_info)
    logger.info("job %s attempt %s", job["job_id"], attempt)
    return run_job(job, attempt=attempt, storage=default_storage)
