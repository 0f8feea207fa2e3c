"""The GPU workers' Celery app: it runs `gpu.generate` and publishes events, nothing else.

Configured from the same settings namespace as the shared app (`sdsaas/celery.py`), so the broker,
the SQS transport and its options, and the GPU role's solo pool and prefetch apply unchanged.
Apart from it on purpose: the shared app registers the control tasks (`jobs.tasks`), and Celery's
Django fix-up, which it installs whenever DJANGO_SETTINGS_MODULE is set, calls `django.setup()`
when a worker starts, loading every installed app (the admin, DRF, `jobs`, `tenants`) into a
process that has no database. A GPU worker reads settings (lazily, `django.conf.settings`) and
writes through the storage backend; neither needs the app registry.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsaas.settings")

# fixups=[]: no Django fix-up (see above). Made the current app by the worker that runs it, not
# by an import (tests import the GPU modules beside the shared app).
app = Celery("sdsaas-gpu", fixups=[], set_as_current=False)
app.config_from_object("django.conf:settings", namespace="CELERY")
