"""Names: the tasks, the queues and the object keys both sides use."""

from __future__ import annotations

from sdsaas.contract.vocabulary import OutputFormat

# --- Task names. Cross-boundary calls use them, never the functions. -------------------------

# Executed by GPU workers (gpu_worker/, no database).
TASK_GPU_GENERATE = "gpu.generate"

# Executed by the control worker (CPU, has the database).
# A GPU worker's events sent together (a micro-batch's, what its event thread was handed at once)
# as one task: its one keyword argument `events` is `events_to_wire` of them (one SQS message, one
# task to run, instead of one each: sdsaas/contract/events.py).
TASK_JOB_EVENTS = "control.job_events"
TASK_SWEEP_UNPUBLISHED = "control.sweep_unpublished"
TASK_SWEEP_DEAD_LETTERS = "control.sweep_dead_letters"
# Admitted jobs whose queue message is gone: sent again (fenced by attempt) or failed.
TASK_RECONCILE_LOST = "control.reconcile_lost_jobs"
TASK_FETCH_INPUT_IMAGE = "control.fetch_input_image"
# Scaling: each model's pool size by the policy (jobs/scaling.py), published as metrics.
TASK_SCALING_PUBLISH = "control.scaling_publish"
# Retention: rate-limit windows of past minutes, idempotency records past their TTL.
TASK_PRUNE_RECORDS = "control.prune_records"
# Webhooks: due messages to the webhooks queue (on the scheduler), and one attempt of one message
# (on the webhooks queue, consumed by its own workers: a slow receiver never delays job events).
TASK_WEBHOOKS_DISPATCH = "control.webhooks_dispatch"
TASK_WEBHOOK_DELIVER = "webhooks.deliver"
# Retention of the delivery log: settled messages (and their attempts) past WEBHOOK_LOG_DAYS.
TASK_WEBHOOKS_PRUNE = "control.webhooks_prune"
# Discord: replies out of date (on the scheduler) to the discord queue, and one reply brought up to
# date or one message deleted (on the discord queue, its own workers: a Discord outage never
# delays job events).
TASK_DISCORD_DISPATCH = "control.discord_dispatch"
TASK_DISCORD_REPLY_SYNC = "discord.reply_sync"
TASK_DISCORD_MESSAGE_DELETE = "discord.message_delete"
# Retention of the handled interaction ids (the replay guard).
TASK_DISCORD_PRUNE = "control.discord_prune"


# --- Queue names. `prefix` is the deployment's (SDSAAS_SQS_QUEUE_PREFIX). ---------------------


def control_queue_name(prefix: str) -> str:
    """The control worker's queue (Celery's default queue)."""
    return f"{prefix}-control"


def model_queue_name(prefix: str, model_slug: str) -> str:
    """The queue of one base model's GPU pool."""
    return f"{prefix}-model-{model_slug}"


def webhooks_queue_name(prefix: str) -> str:
    """The webhook senders' queue."""
    return f"{prefix}-webhooks"


def discord_queue_name(prefix: str) -> str:
    """The Discord senders' queue."""
    return f"{prefix}-discord"


def dead_letter_queue_name(queue_name: str) -> str:
    return f"{queue_name}-dlq"


# --- Object keys in the shared bucket. --------------------------------------------------------


def job_output_prefix(tenant_id: int, job_id: str) -> str:
    """Where a job's images go: `tenants/<tenant>/jobs/<job>/`."""
    return f"tenants/{tenant_id}/jobs/{job_id}/"


def output_key(output_prefix: str, index: int, output_format: OutputFormat) -> str:
    """The key of a job's image number `index`: `<prefix><n>.<ext>`."""
    return f"{output_prefix}{index}.{output_format.extension}"


def cancel_marker_key(output_prefix: str) -> str:
    """Written by the control plane when an admitted job is canceled; polled by its worker."""
    return f"{output_prefix}cancel"


def input_image_key(output_prefix: str, extension: str) -> str:
    """An img2img image fetched from its URL, stored next to the job's outputs."""
    return f"{output_prefix}input.{extension}"


def upload_key(tenant_id: int, upload_id: str, extension: str) -> str:
    """An uploaded input image: `tenants/<tenant>/uploads/<upload>.<ext>`."""
    return f"tenants/{tenant_id}/uploads/{upload_id}.{extension}"
