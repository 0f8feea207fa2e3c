"""A worker's operators' endpoints (sdsaas/worker_ops.py) as WSGI: ready only between the
worker's start of consuming and the beginning of its stop. The served process is tested end to
end in tests/e2e/test_elastic_workers.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from sdsaas import worker_ops


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> Iterator[worker_ops.State]:
    fresh = worker_ops.State()
    monkeypatch.setattr(worker_ops, "STATE", fresh)
    yield fresh


def get(path: str) -> tuple[str, Any]:
    answered: list[str] = []
    body = b"".join(
        worker_ops.app(
            {"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda s, h: answered.append(s)
        )
    )
    return answered[0], json.loads(body) if path != "/metrics" else body.decode()


def test_ready_from_consuming_until_stopping_and_alive_throughout(state: worker_ops.State) -> None:
    assert get("/healthz") == ("200 OK", {"status": "ok"})
    status, body = get("/readyz")
    assert status.startswith("503") and body["error"]["message"] == "The worker is starting."
    worker_ops._consuming()
    assert get("/readyz") == ("200 OK", {"status": "ready"})
    worker_ops._stopping()
    status, body = get("/readyz")
    assert status.startswith("503") and body["error"]["code"] == "not_ready"
    assert body["error"]["message"] == "The worker is stopping."
    assert get("/healthz")[0] == "200 OK"


def test_metrics_are_the_process_registry_and_other_paths_are_404(state: worker_ops.State) -> None:
    status, text = get("/metrics")
    assert status.startswith("200") and "python_info" in text
    status, body = get("/nothing")
    assert status.startswith("404") and body["error"]["code"] == "not_found"
