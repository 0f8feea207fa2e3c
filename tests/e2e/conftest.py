"""Real processes: a control worker and a GPU worker (CPU, tiny model) beside the test process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from tests.support.aws import LocalAws
from tests.support.https import Tls

ROOT = Path(__file__).resolve().parents[2]
E2E_PREFIX = "e2e"
BIN = Path(sys.executable).parent


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    return (
        f"postgres://{user}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    )


class Workers:
    def __init__(
        self,
        aws: LocalAws,
        logs: Path,
        tls: Tls,
        *,
        prefix: str = E2E_PREFIX,
        endpoint_url: str | None = None,
    ) -> None:
        self.prefix = prefix
        self.aws = aws
        self.logs = logs
        self.tls = tls
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {
            **os.environ,
            "SDSAAS_DEBUG": "1",
            "SDSAAS_SQS_ENDPOINT_URL": endpoint_url or aws.endpoint_url,
            "SDSAAS_S3_ENDPOINT_URL": endpoint_url or aws.endpoint_url,
            "SDSAAS_SQS_QUEUE_PREFIX": prefix,
            "SDSAAS_S3_BUCKET": settings.S3_BUCKET,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "SDSAAS_MODEL_CACHE_DIR": str(logs / "model-cache"),
        }
        self.env.pop("DATABASE_URL", None)

    def start_control(self, name: str = "control") -> None:
        env = {
            **self.env,
            "DATABASE_URL": _database_url(),
            "SDSAAS_ROLE": "control",
            # The tests' only way to loopback: this host, with this CA, for img2img URLs.
            "SDSAAS_IMAGE_FETCH_ALLOW_HOSTS": "localhost",
            "SDSAAS_IMAGE_FETCH_CA_FILE": self.tls.ca_file,
        }
        queue = f"{self.prefix}-control"
        argv = ["-A", "sdsaas", "worker", "-P", "solo", "-Q", queue, "-n", f"{name}@%h"]
        self._start(name, argv, env)

    def start_gpu(
        self, name: str = "gpu", queues: str = f"{E2E_PREFIX}-model-tiny", **env: str
    ) -> None:
        argv = ["-A", "gpu_worker.worker", "worker", "-P", "solo", "-Q", queues, "-n", f"{name}@%h"]
        self._start(name, argv, {**self.env, **env})

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def kill(self, name: str) -> None:
        """SIGKILL: the process dies at once, as a lost spot instance does, acking nothing."""
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def wait_exit(self, name: str, timeout: float) -> int:
        process = self.processes.pop(name)
        return process.wait(timeout=timeout)

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [str(BIN / "celery"), *argv, "--loglevel", "INFO"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop(self, name: str, timeout: float = 20) -> None:
        process = self.processes.pop(name)
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="session")
def workers(
    local_aws: LocalAws,
    tls: Tls,
    django_db_setup: Any,
    django_db_blocker: Any,
    tmp_path_factory: Any,
) -> Iterator[Workers]:
    logs = tmp_path_factory.mktemp("logs")
    with django_db_blocker.unblock():
        stack = Workers(local_aws, logs, tls)
        stack.start_control()
        stack.start_gpu()
    yield stack
    for name in list(stack.processes):
        stack.stop(name)


@pytest.fixture
def e2e_prefix(settings: Any) -> str:
    settings.SQS_QUEUE_PREFIX = E2E_PREFIX
    return E2E_PREFIX


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


FINAL = {"succeeded", "failed", "canceled"}


def finished(client: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """The job object, once the API shows it final."""

    def poll() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in FINAL else None

    result: dict[str, Any] = wait_for(poll, timeout, f"job {job_id} to finish")
    return result
