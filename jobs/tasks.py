from __future__ import annotations

import datetime as dt

from celery import shared_task
from django.conf import settings

from jobs.services import jobs_sweep_unpublished
from sdsaas.queues import TASK_SWEEP_UNPUBLISHED


@shared_task(name=TASK_SWEEP_UNPUBLISHED, ignore_result=True)
def sweep_unpublished() -> int:
    return jobs_sweep_unpublished(older_than=dt.timedelta(seconds=settings.SWEEP_UNPUBLISHED_AFTER))
