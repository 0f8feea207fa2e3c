"""Spans exported over OTLP (sdsaas/telemetry.py) to a loopback collector that records what it
receives."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from sdsaas import telemetry
from tests.support.aws_endpoints import OtlpCollector


@pytest.fixture
def collector(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpCollector]:
    with OtlpCollector() as server:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{server.url}/v1/traces")
        settings.OTEL_EXPORTER = "otlp"
        telemetry._provider.cache_clear()
        yield server
        provider = telemetry._provider(settings.OTEL_EXPORTER, f"sdsaas-{settings.ROLE}")
        if provider is not None:
            provider.shutdown()
        telemetry._provider.cache_clear()


def test_flush_exports_the_spans_still_buffered_at_once(collector: OtlpCollector) -> None:
    # given a span ended just now (the batch exporter holds it for up to 5 s)
    with telemetry.span("job.inference", job_id="job_1"):
        pass
    time.sleep(0.3)
    assert collector.recorded("POST", "/v1/traces") == []
    # when the process flushes before it ends (a worker's exec or _exit skips exit handlers)
    telemetry.flush()
    # then the span has reached the collector
    assert len(collector.recorded("POST", "/v1/traces")) == 1
