"""The operators' endpoints, answered before any other middleware: liveness (`/healthz`),
readiness (`/readyz`) and Prometheus metrics (`/metrics`).

The load balancer checks each task at its own address (`Host: 10.0.3.17:8000`), and Prometheus
scrapes it there, which is no allowed host: Django's host validation (CommonMiddleware, and the
https redirect) would answer 400 and take every task out of service. So `OpsMiddleware` answers
these paths first, without reading the host. The checks reveal nothing and change nothing; the
metrics need `Authorization: Bearer <SDSAAS_METRICS_TOKEN>` (without a token set, they are
served only in debug).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

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


def metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus text format of the jobs' and webhooks' collectors (read at scrape time)."""
    token = settings.METRICS_TOKEN
    if not token and not settings.DEBUG:
        return JsonResponse(error_body("not_found", "No such page."), status=404)
    sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if token and not hmac.compare_digest(sent.encode(), token.encode()):
        body = error_body("unauthenticated", "Send 'Authorization: Bearer <metrics token>'.")
        return JsonResponse(body, status=401)
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)


def _registry() -> CollectorRegistry:
    from integrations.webhooks.metrics import WebhooksCollector
    from jobs.metrics import JobsCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector())
    registry.register(WebhooksCollector())
    return registry


ENDPOINTS: dict[str, Callable[[HttpRequest], HttpResponse]] = {
    "/healthz": lambda request: healthz(),
    "/readyz": lambda request: readyz(),
    "/metrics": metrics,
}


class OpsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        endpoint = ENDPOINTS.get(request.path_info)
        if endpoint is not None and request.method in {"GET", "HEAD"}:
            return endpoint(request)
        response: HttpResponse = self.get_response(request)
        return response
