"""The embedded default under load: concurrent submits through a real gunicorn on SQLite.

`make run` and `make test` default to SQLite, so a user's first load test runs on it. Before WAL,
a busy timeout and immediate transactions, concurrent writers got "database is locked" and the API
answered 500. This runs on SQLite whatever database the suite itself uses.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.api_server import api_server
from tests.support.aws import LocalAws
from tests.support.concurrency import run_parallel

ROOT = Path(__file__).resolve().parents[2]

# A plan whose limits the load cannot reach: this is about the database, not about quotas.
SETUP = """
from jobs.models import DiffusionModel, Family
from tenants.models import Plan
from tenants.services import api_key_issue, tenant_create
plan = Plan.objects.create(name="load", monthly_credits=1_000_000, max_concurrent_jobs=2,
                           requests_per_minute=100_000)
tenant = tenant_create(name="load", plan=plan)
DiffusionModel.objects.create(slug="tiny", name="tiny", family=Family.SD15,
                              source_uri="/nonexistent", revision="1", min_side=32)
print(api_key_issue(tenant=tenant, name="load")[1])
"""


@pytest.fixture
def sqlite_api(tmp_path: Path, local_aws: LocalAws) -> Iterator[tuple[str, str]]:
    """A migrated SQLite file, a tenant key, and the API (8 worker processes) serving it."""
    db = tmp_path / "db.sqlite3"
    env = {
        "SDSAAS_DEBUG": "1",
        "DATABASE_URL": f"sqlite:///{db}",
        "SDSAAS_SQS_ENDPOINT_URL": local_aws.endpoint_url,
        "SDSAAS_S3_ENDPOINT_URL": local_aws.endpoint_url,
        "SDSAAS_SQS_QUEUE_PREFIX": f"sqlite{os.getpid()}",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
    }
    manage = [sys.executable, "manage.py"]
    environ = {**os.environ, **env}
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=environ, check=True)
    setup = [*manage, "shell", "-c", SETUP]
    done = subprocess.run(setup, cwd=ROOT, env=environ, check=True, capture_output=True, text=True)
    key = done.stdout.split()[-1]
    # WAL is a property of the file, set by the settings' connection init command.
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with api_server(tmp_path / "gunicorn.log", **env, SDSAAS_API_WORKERS="8") as base:
        yield base, key


def _call(base: str, key: str, method: str, path: str, body: Any = None, **headers: str) -> Any:
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()[:300]


def test_concurrent_submits_on_sqlite_never_500(sqlite_api: tuple[str, str]) -> None:
    # given the API's gunicorn, 8 worker processes over one SQLite file
    base, key = sqlite_api
    body = {"model": "tiny", "prompt": "a fox", "width": 64, "height": 64, "steps": 2}

    # when 16 clients each submit jobs (some sharing Idempotency-Keys), list and poll at once
    def client(index: int) -> list[tuple[str, int, Any]]:
        seen = []
        for n in range(8):
            headers = {"Idempotency-Key": f"shared-{n}"} if index % 4 == 0 else {}
            status, job = _call(base, key, "POST", "/v1/jobs", body, **headers)
            seen.append(("submit", status, job))
            if status == 202:
                seen.append(("get", *_call(base, key, "GET", f"/v1/jobs/{job['id']}")))
            seen.append(("list", *_call(base, key, "GET", "/v1/jobs?limit=5")))
        return seen

    calls = [call for seen in run_parallel(16, client) for call in seen]

    # then every call succeeded: no 500 ("database is locked"), nothing refused
    assert Counter((kind, status) for kind, status, _ in calls) == {
        ("submit", 202): 128,
        ("get", 200): 128,
        ("list", 200): 128,
    }
    # and nothing was lost or doubled: 12 clients x 8 plain submits + 8 idempotent ones
    submitted = {job["id"] for kind, _, job in calls if kind == "submit"}
    assert len(submitted) == 12 * 8 + 8
    listed: set[str] = set()
    path: str | None = "/v1/jobs?limit=100"
    while path:
        _, page = _call(base, key, "GET", path)
        listed |= {job["id"] for job in page["results"]}
        path = page["next"] and page["next"].removeprefix(base)
    assert listed == submitted
