"""The API's HTTP server: `gunicorn -c python:sdsaas.gunicorn_conf sdsaas.wsgi`.

gunicorn answers some requests itself, before Django sees them: a request line or headers over
the limits below, or bytes that are no HTTP request. Its worker here answers those in the API's
one error shape too, as JSON.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from sdsaas.errors import error_body
from sdsaas.settings import API_BIND, API_WORKERS, LOG_FORMAT

bind = API_BIND
workers = API_WORKERS
worker_class = "sdsaas.gunicorn_conf.JsonErrorWorker"
# Request lines and headers are read into memory before anything checks the API key, so they are
# capped. The longest line the API writes is a job list's `next` link (a cursor of a few dozen
# bytes): 4094 bytes (gunicorn's default) is plenty; past it, a 414.
limit_request_line = 4094
# A client sends about ten headers and the load balancer adds its X-Forwarded-* and trace headers;
# 50 leaves room for proxies and SDKs. Past it, a 431.
limit_request_fields = 50
# The largest header the API reads is `Authorization: Bearer sk_live_…` (under 100 bytes) or an
# Idempotency-Key (255); 8190 bytes (gunicorn's default) still takes a browser's cookies on the
# admin pages. Past it, a 431.
limit_request_field_size = 8190
# One line per request on stdout, where the container's log driver picks it up.
accesslog = "-"
if LOG_FORMAT == "json":
    # gunicorn's own lines (its access log, boots, a worker's traceback) as one JSON object each
    # too, like every other line of the process (sdsaas/logs.py). Django's logging, set up when
    # the worker loads the app, takes the root logger; these two keep their handler.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "sdsaas.logs.JsonFormatter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": "INFO", "handlers": ["json"]},
        "loggers": {
            name: {"level": "INFO", "handlers": ["json"], "propagate": False}
            for name in ("gunicorn.error", "gunicorn.access")
        },
    }
# The API is run by its process manager (ECS, devstack), not through `gunicornc`; and the socket's
# default path is one per user, which two servers on one host (tests, `make run`) would share.
control_socket_disable = True

# The API's codes for what gunicorn answers; any other status gets a code from its reason phrase.
_CODES = {400: "malformed_request", 500: "internal_error"}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's `util.write_error`, with a body in the API's error shape instead of HTML."""
    code = _CODES.get(status_int, reason.lower().replace(" ", "_"))
    body = json.dumps(error_body(code, mesg or reason)).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class JsonErrorWorker(SyncWorker):
    """The sync worker, answering gunicorn's own errors (400, 414, 431, ...) as JSON.

    gunicorn's `handle_error` picks the status and logs; it writes the answer with
    `util.write_error`, which it looks up on each call. This worker process has it write JSON.
    """

    def init_process(self) -> None:
        util.write_error = write_json_error
        super().init_process()
