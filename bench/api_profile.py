"""Where one `POST /v1/jobs` spends its time: submits through Django's whole request handler
(middleware, DRF, the service) in the benchmark's own process, one at a time, on the benchmark's
database and SQS server, with the publisher as the settings have it (by default the process's
background thread, after commit: jobs/services/dispatch.py).

The request's SQL statements are timed as they run (`connection.execute_wrapper` on the request's
connection; BEGIN and COMMIT are not statements there). The publish (`jobs_publish`) and, inside
it, the send to SQS (`_send_batch`: Celery making the messages, one SendMessageBatch call) are
timed by wrapping them until the submit's job is published: in the request when publishing is
inline, else in the background thread, whose lag (the response to the publish's end) is measured
too.
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE)\s+"(\w+)"', re.IGNORECASE)


def statement_kind(sql: str) -> str:
    """`SELECT jobs_job`, `UPDATE tenants_ratewindow`, `SAVEPOINT`: the verb and first table."""
    verb = sql.split(None, 1)[0].upper() if sql.strip() else "?"
    table = _TABLE.search(sql)
    return f"{verb} {table.group(1)}" if table else verb


@dataclass
class Sample:
    """One submit: the request's statements ((kind, seconds)) and the wrapped calls' times."""

    total_s: float = 0.0
    publish_s: float = 0.0
    send_s: float = 0.0
    inline_send_s: float = 0.0  # the part of send_s spent in the request's thread
    publish_lag_s: float = 0.0  # the response to the end of the background publish
    statements: list[tuple[str, float]] = field(default_factory=list)


@contextmanager
def _watched(sample: Sample) -> Iterator[None]:
    from django.db import connection

    from jobs.services import dispatch

    publish, send_batch = dispatch.jobs_publish, dispatch._send_batch
    request_thread = threading.get_ident()

    def timed_execute(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        began = time.perf_counter()
        try:
            return execute(sql, *args)
        finally:
            sample.statements.append((statement_kind(sql), time.perf_counter() - began))

    def timed_publish(**kwargs: Any) -> int:
        began = time.perf_counter()
        try:
            return publish(**kwargs)
        finally:
            sample.publish_s += time.perf_counter() - began

    def timed_send(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return send_batch(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - began
            sample.send_s += elapsed
            if threading.get_ident() == request_thread:
                sample.inline_send_s += elapsed

    with (
        connection.execute_wrapper(timed_execute),
        mock.patch.object(dispatch, "jobs_publish", timed_publish),
        mock.patch.object(dispatch, "_send_batch", timed_send),
    ):
        yield


def _submit(client: Any, sample: Sample, key: str, body: dict[str, Any]) -> None:
    from django.conf import settings

    from jobs.services import dispatch

    began = time.perf_counter()
    response = client.post(
        "/v1/jobs",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )
    sample.total_s = time.perf_counter() - began
    if response.status_code != 202:
        answer = f"{response.status_code}: {response.content!r}"
        raise SystemExit(f"a profiled submit answered {answer}")
    if settings.PUBLISH_IN_BACKGROUND:
        if not dispatch.background_publisher().flush(timeout=30):
            raise SystemExit("a profiled submit's job was not published within 30 s")
        sample.publish_lag_s = time.perf_counter() - began - sample.total_s


def profile_submits(
    *, key: str, body: dict[str, Any], count: int, stats: Path | None = None
) -> dict[str, Any]:
    """Medians (ms) over `count` submits after one to warm up, and one submit's statements;
    with `stats`, cProfile's statistics of the requests' thread written there."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    samples: list[Sample] = []
    profiler = cProfile.Profile()
    for i in range(count + 1):
        sample = Sample()
        profiled = profiler if stats is not None and i else contextlib.nullcontext()
        with _watched(sample), profiled:
            _submit(client, sample, key, body)
        samples.append(sample)
    samples = samples[1:]
    if stats is not None:
        profiler.dump_stats(stats)

    def median_ms(value: Callable[[Sample], float]) -> float:
        return round(statistics.median(value(s) for s in samples) * 1000, 2)

    def sql_s(sample: Sample) -> float:
        return sum(t for _, t in sample.statements)

    return {
        "submits": len(samples),
        "publish_in_background": settings.PUBLISH_IN_BACKGROUND,
        "total_ms": median_ms(lambda s: s.total_s),
        "sql_ms": median_ms(sql_s),
        "statements": statistics.median(len(s.statements) for s in samples),
        "publish_ms": median_ms(lambda s: s.publish_s),
        "sqs_send_ms": median_ms(lambda s: s.send_s),
        "publish_lag_ms": median_ms(lambda s: s.publish_lag_s),
        # What is neither the request's SQL nor a send in it: Django, DRF, validation, the
        # serializer, the hand-over to the publisher (or kombu's framing when inline).
        "python_ms": median_ms(lambda s: s.total_s - sql_s(s) - s.inline_send_s),
        "statement_kinds": dict(Counter(kind for kind, _ in samples[-1].statements)),
    }
