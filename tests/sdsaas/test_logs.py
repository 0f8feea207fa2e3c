"""Structured logs (sdsaas/logs.py): one JSON object per record, with the context's ids."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_worker.watchdog import JobWatchdog
from sdsaas import logs
from tests.support.api_server import api_server
from tests.support.factories import DiffusionModelFactory, TenantFactory, api_client_for


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """Every record (INFO and up), as the JSON handler of the settings writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logs.clear()
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)
    logs.clear()


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_object_with_the_ids_bound_around_it(lines: io.StringIO) -> None:
    logger = logging.getLogger("sdsaas.test")
    logger.info("before")
    with logs.bound(job_id="job_1", tenant_id=7):
        logger.warning("during %s", "it")
    logger.info("after")
    before, during, after = [r for r in records(lines) if r["logger"] == "sdsaas.test"]
    assert during["message"] == "during it" and during["level"] == "WARNING"
    assert (during["job_id"], during["tenant_id"], during["logger"]) == ("job_1", 7, "sdsaas.test")
    assert "job_id" not in before and "job_id" not in after
    assert str(during["time"]).endswith("+00:00")


def test_an_exception_is_kept_whole_in_its_record(lines: io.StringIO) -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("sdsaas.test").exception("it failed")
    [record] = [r for r in records(lines) if r["logger"] == "sdsaas.test"]
    assert "ValueError: bad" in str(record["exc_info"])


@pytest.mark.usefixtures("local_aws")
@pytest.mark.django_db(transaction=True)
def test_a_request_binds_its_tenant_and_the_next_request_starts_empty(
    lines: io.StringIO,
) -> None:
    # given a tenant, and a model whose worker pool is empty
    tenant = TenantFactory()
    DiffusionModelFactory(slug="tiny")
    # when its key submits a job (published within the request here: the pool is woken, logged)
    body = {"model": "tiny", "prompt": "a fox"}
    assert api_client_for(tenant).post("/v1/jobs", body, format="json").status_code == 202
    # then the line logged during the request names the tenant and the task of none
    [woke] = [r for r in records(lines) if "woke the empty pools" in str(r["message"])]
    assert woke["tenant_id"] == tenant.pk and woke["logger"] == "jobs.services.scaling"
    # and nothing of it outlives the request
    logging.getLogger("sdsaas.test").info("later")
    assert "tenant_id" not in records(lines)[-1]


@pytest.mark.django_db
def test_django_s_line_for_a_refused_request_names_the_tenant(lines: io.StringIO) -> None:
    # given a tenant's key
    tenant = TenantFactory()
    # when it asks for a job that does not exist
    assert api_client_for(tenant).get("/v1/jobs/job_nonesuch").status_code == 404
    # then the line Django logs for the 404 (after the middleware chain) names the tenant
    [refused] = [r for r in records(lines) if r["logger"] == "django.request"]
    assert refused["tenant_id"] == tenant.pk, refused
    # and nothing of it outlives the request
    logging.getLogger("sdsaas.test").info("later")
    assert "tenant_id" not in records(lines)[-1]


def test_the_job_watchdog_s_thread_logs_in_the_job_s_context(lines: io.StringIO) -> None:
    # given a job's watchdog made where the job's ids are bound (the task's thread)
    with logs.bound(job_id="job_1", attempt=2):
        guard = JobWatchdog(
            time_limit_s=0.2, stop_passed=lambda: False, canceled=lambda: False, abandon=print
        )
    # when it decides, on its own thread, that the job must end
    with guard:
        while guard.reason is None:
            time.sleep(0.05)
    # then its record names the job and its attempt
    [decided] = [r for r in records(lines) if r["logger"] == "gpu_worker.watchdog"]
    assert (decided["job_id"], decided["attempt"]) == ("job_1", 2), decided


def test_the_api_server_logs_only_json_lines_in_json_mode(tmp_path: Path) -> None:
    # given the API under gunicorn with JSON logs
    log = tmp_path / "gunicorn.log"
    database = tmp_path / "db.sqlite3"
    env = {"SDSAAS_LOG_FORMAT": "json", "DATABASE_URL": f"sqlite:///{database}"}
    with api_server(log, **env) as base:
        # when a request is served and another refused
        for path in ("/healthz", "/v1/jobs"):
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(f"{base}{path}", timeout=10).close()
    # then every line it printed (boot, access log, refusal, stop) is one JSON object
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    loggers = {record["logger"] for record in parsed}
    assert {"gunicorn.error", "gunicorn.access"} <= loggers, loggers
    assert any("GET /healthz" in str(record["message"]) for record in parsed)
