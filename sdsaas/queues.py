"""Queue and task names: the only place they are spelled. Cross-boundary calls use these names.

This module is imported by settings, so it reads settings lazily (inside functions) only.
"""

from __future__ import annotations

from django.conf import settings

# Executed by GPU workers (gpu_worker/, no database). Called by name only.
TASK_GPU_GENERATE = "gpu.generate"

# Executed by the control worker (CPU, has the database).
TASK_SWEEP_UNPUBLISHED = "control.sweep_unpublished"
TASK_SWEEP_DEAD_LETTERS = "control.sweep_dead_letters"
# Admitted jobs whose queue message is gone: sent again (fenced by attempt) or failed.
TASK_RECONCILE_LOST = "control.reconcile_lost_jobs"
TASK_FETCH_INPUT_IMAGE = "control.fetch_input_image"
# Retention: rate-limit windows of past minutes, idempotency records past their TTL.
TASK_PRUNE_RECORDS = "control.prune_records"
# Events from GPU workers to the control worker, fenced by attempt.
TASK_JOB_RECEIVED = "control.job_received"  # each delivery, before the model is loaded
TASK_JOB_STARTED = "control.job_started"  # the model is loaded, the job is processing
TASK_JOB_PROGRESS = "control.job_progress"
TASK_JOB_SUCCEEDED = "control.job_succeeded"
TASK_JOB_FAILED = "control.job_failed"
TASK_JOB_PREEMPTED = "control.job_preempted"


def control_queue_name() -> str:
    """The control worker's queue (Celery's default queue, `<prefix>-control`)."""
    return f"{settings.SQS_QUEUE_PREFIX}-control"


def model_queue_name(model_slug: str) -> str:
    """The SQS queue of one base model's GPU pool: `<prefix>-model-<slug>`."""
    return f"{settings.SQS_QUEUE_PREFIX}-model-{model_slug}"


# Object keys shared by the control plane and GPU workers.


def job_output_prefix(tenant_id: int, job_public_id: str) -> str:
    """Images of a job: `tenants/<tenant>/jobs/<job>/<n>.<ext>`."""
    return f"tenants/{tenant_id}/jobs/{job_public_id}/"


def cancel_marker_key(output_prefix: str) -> str:
    """Written by the control plane when an admitted job is canceled; polled by its worker."""
    return f"{output_prefix}cancel"
