"""A Celery worker's operators' endpoints (control and GPU workers alike), on
SDSAAS_WORKER_OPS_PORT (0: none), served by a thread of the worker process:

- `/healthz`: 200 while the process lives (its HTTP thread answers);
- `/readyz`: 200 once the worker consumes its queues and until it begins to stop (SIGTERM, a
  spot notice), 503 before and after: an orchestrator sends it no traffic, a deploy waits on it;
- `/metrics`: Prometheus text of the process's registry (a GPU worker's: gpu_worker/metrics.py).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from celery.signals import worker_ready, worker_shutting_down
from django.conf import settings
from prometheus_client import REGISTRY, make_wsgi_app

from sdsaas.error_shape import error_body

logger = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class State:
    def __init__(self) -> None:
        self.consuming = threading.Event()
        self.stopping = threading.Event()

    @property
    def ready(self) -> bool:
        return self.consuming.is_set() and not self.stopping.is_set()


STATE = State()


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/metrics":
        return metrics_app(environ, start_response)
    if path == "/healthz":
        return _json(start_response, "200 OK", {"status": "ok"})
    if path == "/readyz":
        if STATE.ready:
            return _json(start_response, "200 OK", {"status": "ready"})
        reason = "stopping" if STATE.stopping.is_set() else "starting"
        body = error_body("not_ready", f"The worker is {reason}.")
        return _json(start_response, "503 Service Unavailable", body)
    return _json(
        start_response,
        "404 Not Found",
        error_body("not_found", "No such page."),
    )


metrics_app = make_wsgi_app(REGISTRY)


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


class _QuietHandler(WSGIRequestHandler):
    timeout = 5  # a connection that sends nothing is dropped, not waited on

    def log_message(self, *args: Any) -> None:  # probes every few seconds: not worth a line each
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per request: a slow scrape never holds up the health check."""

    daemon_threads = True


def serve() -> WSGIServer | None:
    """Serve on this process's port (None when off)."""
    if settings.WORKER_OPS_PORT <= 0:
        return None
    server = make_server(
        "0.0.0.0",
        settings.WORKER_OPS_PORT,
        app,
        server_class=_ThreadingServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="worker-ops", daemon=True).start()
    logger.info(
        "operators' endpoints on :%s (/healthz, /readyz, /metrics)", settings.WORKER_OPS_PORT
    )
    return server


@worker_ready.connect
def _consuming(**_: Any) -> None:
    STATE.consuming.set()


@worker_shutting_down.connect
def _stopping(**_: Any) -> None:
    STATE.stopping.set()
