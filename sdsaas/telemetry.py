"""Traces of a job, from the API through SQS to the GPU worker and the webhook (OpenTelemetry).

One trace per job: the API's `job.submit` span is its root, and its W3C `traceparent` is kept
with the job (`Job.trace_parent`) and travels with the job's SQS message as its `traceparent`
message attribute, beside the body (`task_options`, read back by `traceparent_of`), so
every later piece of work on the job, in any process, is a child of it:

- the GPU worker: `job.queue_wait` (the job's creation to its receive), `job.load_s`,
  `job.inference_s`, `job.encode_s`, `job.upload_s` (gpu_worker/runner.py's timed steps);
- the webhooks sender: `webhook.deliver`, one per attempt of each of the job's messages.

`SDSAAS_OTEL_EXPORTER` says where spans go: `none` (the default), `otlp` (OTLP over HTTP to
`OTEL_EXPORTER_OTLP_ENDPOINT`, OpenTelemetry's own variable: an ADOT collector beside the task
forwards them to X-Ray), or `file:<path>` (one JSON span per line, appended: local runs, tests).
The provider is this module's, not OpenTelemetry's global one, so nothing else's spans mix in.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from django.conf import settings
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()
# The SQS message attribute that carries a message's trace context; consumers must ask for it
# (the broker's `fetch_message_attributes`, sdsaas/settings.py).
TRACEPARENT_ATTRIBUTE = "traceparent"


class JsonLinesExporter(SpanExporter):
    """Each span as one JSON line appended to a file (several processes may share it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Any) -> SpanExportResult:
        lines = "".join(span.to_json(indent=None) + "\n" for span in spans)
        with self._lock, open(self.path, "a") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS


@functools.cache
def _provider(exporter: str, service: str) -> TracerProvider | None:
    if exporter == "none":
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter.startswith("file:"):
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(exporter[5:])))
    else:  # otlp: settings accept nothing else
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def tracer() -> trace.Tracer:
    provider = _provider(settings.OTEL_EXPORTER, f"sdsaas-{settings.ROLE}")
    return provider.get_tracer("sdsaas") if provider else trace.NoOpTracer()


def flush(timeout_s: float = 5.0) -> None:
    """Export the spans still buffered (otlp batches them up to 5 s): before a process ends
    without its exit handlers (a GPU worker's exit or exec after an abandoned job)."""
    provider = _provider(settings.OTEL_EXPORTER, f"sdsaas-{settings.ROLE}")
    if provider is not None:
        provider.force_flush(int(timeout_s * 1000))


def _parent(traceparent: str) -> Context | None:
    return PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None


@contextlib.contextmanager
def span(name: str, *, parent: str = "", **attributes: Any) -> Iterator[trace.Span]:
    """A span around a block: a child of `parent` (a traceparent) if given, else of the current
    span."""
    with tracer().start_as_current_span(
        name, context=_parent(parent), attributes=_attributes(attributes)
    ) as current:
        yield current


def record(name: str, *, parent: str, started_s_ago: float, **attributes: Any) -> None:
    """A span that ended now and began `started_s_ago` seconds ago, child of `parent`."""
    end = time.time_ns()
    started = tracer().start_span(
        name,
        context=_parent(parent),
        start_time=end - int(started_s_ago * 1e9),
        attributes=_attributes(attributes),
    )
    started.end(end_time=end)


def traceparent() -> str:
    """The current span's W3C traceparent ("" outside a recorded span)."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def task_options(traceparent: str) -> dict[str, Any]:
    """Celery `send_task` options that send `traceparent` as the SQS message's attribute (kombu's
    SQS transport sends a message's `message_attributes` property as its MessageAttributes);
    none for an untraced message."""
    if not traceparent:
        return {}
    attribute = {"DataType": "String", "StringValue": traceparent}
    return {"message_attributes": {TRACEPARENT_ATTRIBUTE: attribute}}


def traceparent_of(sqs_message: Mapping[str, Any]) -> str:
    """The traceparent an SQS message carries as it was received ("" if none)."""
    attribute = (sqs_message.get("MessageAttributes") or {}).get(TRACEPARENT_ATTRIBUTE) or {}
    return str(attribute.get("StringValue", ""))


def _attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if isinstance(v, str | bool | int | float)}
