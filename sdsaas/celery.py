"""The Celery app shared by the API (publisher), the control worker and the beat scheduler.

GPU workers have their own (`gpu_worker/app.py`): this one registers the control tasks and, through
Celery's Django fix-up, sets up the whole web application in a worker.
"""

from __future__ import annotations

import functools
import os

from celery import Celery
from celery.signals import worker_ready
from kombu.connection import ConnectionPool

from sdsaas import worker_ops

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsaas.settings")

app = Celery("sdsaas")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["jobs", "integrations.webhooks", "integrations.discord"])


@worker_ready.connect
def _serve_operators_endpoints(**_: object) -> None:
    """A control or sender worker's /healthz, /readyz and /metrics (sdsaas/worker_ops.py)."""
    worker_ops.serve()


@functools.cache
def publisher_pool() -> ConnectionPool:
    """Connections for publishing from request handlers and sweepers.

    They fail at once when the broker is down (`max_retries: 0`) instead of retrying for seconds
    inside an API request: a job whose publish failed is published again by the sweeper. Their
    transport can send in batches (`sdsaas.broker.batch`).
    """
    connection = app.connection_for_write(
        transport="sdsaas.broker.batch:Transport", transport_options={"max_retries": 0}
    )
    return connection.Pool(limit=app.conf.broker_pool_limit or 10)
