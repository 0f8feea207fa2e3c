"""Queue and task names: the only place they are spelled. Cross-boundary calls use these names.

This module is imported by settings, so it reads settings lazily (inside functions) only.
"""

from __future__ import annotations

from django.conf import settings

# Executed by GPU workers (gpu_worker/, no database). Called by name only.
TASK_GPU_GENERATE = "gpu.generate"

# Executed by the control worker (CPU, has the database).
TASK_SWEEP_UNPUBLISHED = "control.sweep_unpublished"


def control_queue_name() -> str:
    return str(settings.CELERY_TASK_DEFAULT_QUEUE)


def model_queue_name(model_slug: str) -> str:
    """The SQS queue of one base model's GPU pool: `<prefix>-model-<slug>`."""
    return f"{settings.SQS_QUEUE_PREFIX}-model-{model_slug}"
