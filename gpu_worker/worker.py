"""Celery entry point of a GPU worker: `celery -A gpu_worker.worker worker -P solo -Q <queues>`.

One job at a time per process (solo pool, prefetch 1), no database: SDSAAS_ROLE=gpu.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsaas.settings")
os.environ["SDSAAS_ROLE"] = "gpu"
django.setup()

import gpu_worker.tasks  # noqa: E402, F401  (registers the task)
from sdsaas.celery import app  # noqa: E402

__all__ = ["app"]
