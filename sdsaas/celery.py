"""The Celery app shared by the API (publisher), the control worker and the beat scheduler."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsaas.settings")

app = Celery("sdsaas")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["jobs"])
