"""Celery entry point of a GPU worker: `celery -A gpu_worker.worker worker -P solo -Q <queues>`.

One job at a time per process (solo pool, prefetch 1), no database: SDSAAS_ROLE=gpu. The app is
the GPU workers' own (`gpu_worker.app`), with the one task `gpu.generate`; the web application
(`django.setup()`, the installed apps, the control tasks) is never loaded here. A worker that the
job watchdog starts again (exec, same arguments) boots through this module the same way.
"""

from __future__ import annotations

import logging.config
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsaas.settings")
os.environ["SDSAAS_ROLE"] = "gpu"

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

if settings.ROLE != "gpu":  # read before this module set the role: a database, a prefetch of 2...
    raise ImproperlyConfigured("gpu_worker.worker must be imported before settings are read")
# What django.setup() would have done for logging (levels of noisy libraries); Celery then puts
# its own handler on the root logger, at the worker's --loglevel.
logging.config.dictConfig(settings.LOGGING)

from celery.signals import worker_ready  # noqa: E402

import gpu_worker.tasks  # noqa: E402, F401  (registers the task)
from gpu_worker import metrics, spot  # noqa: E402
from gpu_worker.app import app  # noqa: E402
from gpu_worker.protection import scale_in_protection  # noqa: E402
from sdsaas import worker_ops  # noqa: E402


@worker_ready.connect
def _start_watches(**_: object) -> None:
    scale_in_protection().at_start()
    spot.start_watch()
    metrics.register()
    worker_ops.serve()


__all__ = ["app"]
