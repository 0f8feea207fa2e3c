"""Real processes: a control worker and a GPU worker (CPU, tiny model) beside the test process.

Also the pools of GPU workers of their own that the tests of worker failures start and kill
(`pool`), and the tiny model and a tenant for the tests that run jobs on the session's workers.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from PIL import Image
from rest_framework.test import APIClient

from jobs.models import DiffusionModel, Job
from sdsaas.broker.sqs import ensure_model_queue, model_queue_name
from tenants.models import Tenant
from tests.support.api_server import api_server
from tests.support.aws import LocalAws
from tests.support.factories import (
    DiffusionModelFactory,
    PlanFactory,
    TenantFactory,
    api_client_for,
)
from tests.support.https import Tls

ROOT = Path(__file__).resolve().parents[2]
E2E_PREFIX = "e2e"
# The workers' long poll: a stopping worker waits out the one it has open (SDSAAS_SQS_WAIT_TIME_S;
# 10 s by default), so the tests' workers poll for less and stop sooner.
E2E_WAIT_TIME_S = 2
BIN = Path(sys.executable).parent


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    return (
        f"postgres://{user}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    )


@pytest.fixture
def served_api(local_aws: LocalAws, tmp_path: Path) -> Iterator[str]:
    """The API served by gunicorn as deployed, on the test database (empty at the start of a test
    with `django_db(transaction=True)`) and the local AWS server; its base URL."""
    env = {
        "DATABASE_URL": _database_url(),
        "SDSAAS_SQS_ENDPOINT_URL": local_aws.endpoint_url,
        "SDSAAS_S3_ENDPOINT_URL": local_aws.endpoint_url,
        "SDSAAS_SQS_QUEUE_PREFIX": "served",
        "SDSAAS_S3_BUCKET": settings.S3_BUCKET,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
    }
    with api_server(tmp_path / "gunicorn.log", **env) as url:
        yield url


# What a Celery worker prints when its warm shutdown begins (SIGTERM).
WARM_SHUTDOWN = "worker: Warm shutdown"


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
            "SDSAAS_SQS_WAIT_TIME_S": str(E2E_WAIT_TIME_S),
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

    def start_sender(self, queue: str, name: str, **env: str) -> None:
        """A sender of notifications (`webhooks` or `discord`) as `make run` starts one: its own
        queue, threads."""
        argv = ["-A", "sdsaas", "worker", "-P", "threads", "-c", "4", "-n", f"{name}@%h"]
        env = {**self.env, "DATABASE_URL": _database_url(), "SDSAAS_ROLE": "control", **env}
        self._start(name, [*argv, "-Q", f"{self.prefix}-{queue}"], env)

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

    def stop(
        self, name: str, timeout: float = 20, wake: Callable[[], object] | None = None
    ) -> None:
        """A warm shutdown: what its open long poll receives is handed back. Use it when a
        later test consumes the same queue: a killed worker's open poll (E2E_WAIT_TIME_S at
        most) takes messages sent meanwhile out of sight for the queue's visibility timeout.

        The stop waits for that poll's answer; `wake`, called once the stop has begun, may end
        it at once with a message to the worker's queue (handed back, never run by it)."""
        process = self.processes.pop(name)
        stops_before = self.log(name).count(WARM_SHUTDOWN)
        process.terminate()
        if wake is not None:
            wait_for(
                lambda: (
                    self.log(name).count(WARM_SHUTDOWN) > stops_before or process.poll() is not None
                ),
                timeout,
                f"{name}'s warm shutdown to begin",
                interval=0.05,
            )
            wake()
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
    for name in list(stack.processes):  # the session's end: nothing left to finish
        stack.kill(name)


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


def download(url: str) -> Image.Image:
    with urllib.request.urlopen(url, timeout=10) as response:
        image = Image.open(io.BytesIO(response.read()))
        image.load()
        return image


def log_time(log: str, pattern: str) -> float:
    """When the worker logged a line (Celery's `[YYYY-MM-DD HH:MM:SS,mmm: ...]`, local time)."""
    match = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]*\] " + pattern, log)
    assert match, f"no log line matching {pattern!r}"
    stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


# --- the tiny model on the session's workers -------------------------------------------------


def tiny_model(tiny_model_dir: Path, **fields: Any) -> DiffusionModel:
    """The session's tiny pipeline in the catalog, as the GPU workers load it."""
    defaults = {
        "slug": "tiny",
        "source_uri": str(tiny_model_dir),
        "revision": "tiny-1",
        "min_side": 32,
        "max_side": 256,
    }
    return DiffusionModelFactory(**{**defaults, **fields})  # type: ignore[no-any-return]


@pytest.fixture
def model(workers: Workers, tiny_model_dir: Path) -> DiffusionModel:
    """The tiny model, which the session's workers serve."""
    return tiny_model(tiny_model_dir)


@pytest.fixture
def tenant() -> Tenant:
    """A tenant with room for four jobs at once; `client` is its API client."""
    return TenantFactory(plan=PlanFactory(max_concurrent_jobs=4))  # type: ignore[no-any-return]


# --- GPU workers of a test's own, to kill and stop (test_worker_failures.py, test_worker_cancel.py)

VISIBILITY_S = 5  # the least SDSAAS_SQS_VISIBILITY_TIMEOUT takes; heartbeats every second
# A job that must end (stop grace, time limit, cancel) ends within this of its bound, whatever
# its step time: a check (0.2 s), the runner's chance to end it (1 s), then the hand-back.
STOP_MARGIN_S = 3.0
# On the tiny model a step takes tens of milliseconds: these jobs run for seconds.
LONG_JOB = {"width": 256, "height": 256, "steps": 150, "scheduler": "euler"}
# More than 5 x VISIBILITY_S (the test asserts it ran > 25 s): a step takes 0.47-1.33 s on two
# CPU cores, depending on the machine, so 65 steps take 30-86 s.
LONGER_JOB = {"width": 1024, "height": 1024, "steps": 65, "scheduler": "euler", "num_outputs": 4}
SHORT_JOB = {"width": 64, "height": 64, "steps": 2}
# Steps of several seconds each (four 2048x2048 images): a step outlasts every bound tested.
LONG_STEP_JOB = {"width": 2048, "height": 2048, "steps": 3, "num_outputs": 4, "scheduler": "euler"}


@dataclass
class Pool:
    """One model, its queue and the GPU worker serving it; a tenant with a client.

    Its workers have a short base visibility timeout (extended by their heartbeat while they
    hold a job), so that redelivery takes seconds.
    """

    workers: Workers
    slug: str
    client: APIClient
    tenant: Tenant

    @property
    def queue(self) -> str:
        return model_queue_name(self.slug)

    @property
    def worker(self) -> str:
        return f"gpu-{self.slug}"

    def start_worker(self, name: str = "", **env: str) -> None:
        # The workers extend messages by the base timeout the queue was created with.
        env = {"SDSAAS_SQS_VISIBILITY_TIMEOUT": str(VISIBILITY_S), **env}
        self.workers.start_gpu(name or self.worker, queues=self.queue, **env)

    def wait_ready(self, *names: str) -> None:
        for name in names:
            wait_for(lambda n=name: " ready." in self.workers.log(n), 90, f"{name} to be ready")

    def submit(self, **fields: Any) -> str:
        body = {"model": self.slug, "prompt": "a lighthouse", **fields}
        response = self.client.post("/v1/jobs", body, format="json")
        assert response.status_code == 202, response.content
        return str(response.json()["id"])

    def job(self, job_id: str) -> Job:
        return Job.objects.get(public_id=job_id)

    def wait_processing(self, job_id: str, attempt: int = 1, timeout: float = 90) -> None:
        def running() -> bool:
            job = self.job(job_id)
            return job.status == Job.Status.PROCESSING and job.attempt == attempt

        wait_for(running, timeout, f"{job_id} to be processing as attempt {attempt}")

    def log(self, name: str = "") -> str:
        return self.workers.log(name or self.worker)

    def holder(self, job_id: str, attempt: int, names: tuple[str, ...]) -> str:
        """Which of the named workers received the job as `attempt`."""
        line = f"job {job_id} attempt {attempt}"
        return str(
            wait_for(lambda: next((n for n in names if line in self.log(n)), None), 30, line)
        )

    def deliveries(self, job_id: str) -> list[int]:
        """The attempt of each delivery, from the job's history."""
        received = self.job(job_id).events.filter(kind="received")
        return list(received.values_list("attempt", flat=True))


@pytest.fixture
def pool(workers: Workers, tiny_model_dir: Path, settings: Any) -> Iterator[Pool]:
    """A pool on a model of its own, with no worker yet; its workers are killed after the test."""
    settings.SQS_VISIBILITY_TIMEOUT = VISIBILITY_S
    slug = f"tiny{uuid.uuid4().hex[:6]}"
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=2, max_pixels=2048**2))
    tiny_model(tiny_model_dir, slug=slug, max_side=2048)
    # The queue exists with its redrive policy and timeout before a worker would create it bare.
    ensure_model_queue(slug)
    made = Pool(workers, slug, api_client_for(tenant), tenant)
    yield made
    # Killed, not stopped: nothing of the pool's own model and queue outlives the test, and a
    # warm shutdown would wait out an open long poll for nothing.
    for name in [name for name in workers.processes if name.startswith(made.worker)]:
        workers.kill(name)
