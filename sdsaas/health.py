"""Liveness (`/healthz`) and readiness (`/readyz`), answered before any other middleware.

The load balancer checks each task at its own address (`Host: 10.0.3.17:8000`), which is no
allowed host: Django's host validation (CommonMiddleware, and the https redirect) would answer
400 and take every task out of service. So `HealthMiddleware` answers these two paths first,
without reading the host; they reveal nothing and change nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from sdsaas.errors import error_body

logger = logging.getLogger(__name__)


def healthz() -> JsonResponse:
    """Liveness for the load balancer: the process serves requests (no database: its outage
    must not take every task out of the target group at once)."""
    return JsonResponse({"status": "ok"})


def readyz() -> JsonResponse:
    """Readiness: the process serves requests and its database answers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:  # the reason goes to the log, not to whoever asks
        logger.warning("not ready: the database does not answer: %s", exc)
        return JsonResponse(error_body("not_ready", "The database does not answer."), status=503)
    return JsonResponse({"status": "ready"})


CHECKS: dict[str, Callable[[], JsonResponse]] = {"/healthz": healthz, "/readyz": readyz}


class HealthMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        check = CHECKS.get(request.path_info)
        if check is not None and request.method in {"GET", "HEAD"}:
            return check()
        response: HttpResponse = self.get_response(request)
        return response
