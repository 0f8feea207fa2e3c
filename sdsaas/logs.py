"""Structured logs: one JSON object per line, with the ids of the job and the tenant at hand.

`SDSAAS_LOG_FORMAT=json` (the default with debug off) formats every record of every process (the
API, the control worker, the GPU workers) as JSON: `time`, `level`, `logger`, `message`, the
context's ids (`tenant_id`, `job_id`, `attempt`, `task`) when set, and `exc_info` for an
exception. `plain` (the default in debug) keeps the human line.

The context is a context variable, so each thread and request has its own:

- the API binds `tenant_id` when a request's API key is authenticated (tenants/authentication.py)
  and `ContextMiddleware` clears it when the response leaves;
- a Celery task of either app (control or GPU) binds `task`, and `job_id` (and `attempt`) from
  its keyword arguments, for as long as it runs (the `task_prerun`/`task_postrun` signals).

Standard library only: a formatter and a filter are a few lines, and the records keep every
field a log pipeline (CloudWatch Logs Insights) can query.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from celery.signals import task_postrun, task_prerun
from django.core.signals import request_finished
from django.dispatch import receiver

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "sdsaas_log_context", default=None
)
CONTEXT_FIELDS = ("tenant_id", "job_id", "attempt", "task")


def bind(**ids: Any) -> None:
    """Add ids to the current context (None values are left out)."""
    _context.set({**(_context.get() or {}), **{k: v for k, v in ids.items() if v is not None}})


def clear() -> None:
    _context.set(None)


@contextlib.contextmanager
def bound(**ids: Any) -> Iterator[None]:
    """The ids for the duration of a block, then the context as it was."""
    token = _context.set({**(_context.get() or {}), **ids})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts the context's ids on each record (as attributes), for any formatter to use."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class ContextMiddleware:
    """Each request starts with an empty context (a thread serves many requests), and keeps its
    ids until it is finished (`_clear_request`): Django logs a 4xx or 5xx answer ("Not Found:
    ...") after the middleware chain has returned, and that line names the tenant too."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        clear()
        return self.get_response(request)


@receiver(request_finished)
def _clear_request(**_: Any) -> None:
    """The response was sent and closed: nothing of the request outlives it."""
    clear()


@task_prerun.connect
def _bind_task(task: Any = None, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    kwargs = kwargs or {}
    job = kwargs.get("job")  # the GPU task's one argument: the job message
    source = job if isinstance(job, dict) else kwargs
    clear()
    bind(task=getattr(task, "name", None), job_id=source.get("job_id"))
    if job is None:  # an event's attempt; the GPU task binds its delivery's (gpu_worker/tasks.py)
        bind(attempt=kwargs.get("attempt"))


@task_postrun.connect
def _clear_task(**_: Any) -> None:
    clear()
