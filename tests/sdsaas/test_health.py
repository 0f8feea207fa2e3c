"""Liveness (`/healthz`) and readiness (`/readyz`) of the API, over real HTTP (gunicorn)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.api_server import api_server


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.django_db
def test_ready_when_the_database_answers(client: object) -> None:
    response = client.get("/readyz")  # type: ignore[attr-defined]
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


def test_alive_but_not_ready_without_a_database_and_the_reason_stays_in_the_log(
    tmp_path: Path,
) -> None:
    # given the API with a database it cannot open
    log = tmp_path / "gunicorn.log"
    folder = tmp_path / "a-folder-not-a-database"
    folder.mkdir()
    with api_server(log, DATABASE_URL=f"sqlite:///{folder}") as base:
        # then it is alive, and not ready, in the API's error shape
        assert get(f"{base}/healthz") == (200, {"status": "ok"})
        status, body = get(f"{base}/readyz")
    assert status == 503
    assert body == {
        "error": {"code": "not_ready", "message": "The database does not answer.", "details": {}}
    }
    assert "not ready: the database does not answer" in log.read_text()
