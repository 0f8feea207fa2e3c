"""`make run`: the real processes (moto_server, gunicorn, Celery worker and beat), run twice."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from PIL import Image

from jobs.models import Job, JobEvent
from sdsaas.devstack import api_request
from tenants.models import RateWindow, Tenant
from tenants.services import api_key_issue
from tests.e2e.conftest import _database_url
from tests.support.aws import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db(transaction=True)


class Output:
    """A process's stdout, line by line as it arrives through the pipe."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, text: str, timeout: float) -> str:
        """The first line from here on that holds `text`; fails if none comes within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                output = "".join(self.lines)
                raise AssertionError(f"no {text!r} within {timeout}s:\n{output}") from None
            if line is None:
                raise AssertionError(f"output ended before {text!r}:\n{''.join(self.lines)}")
            self.lines.append(line)
            if text in line:
                return line


def call(method: str, url: str, key: str, body: dict[str, Any] | None = None) -> Any:
    """The API's JSON answer; an HTTP error raises (the stack's own `api` exits instead)."""
    with urllib.request.urlopen(api_request(method, url, key, body), timeout=30) as response:
        return json.loads(response.read())


def devstack_command() -> tuple[list[str], dict[str, str], str]:
    """`make run` serving (no --exit-after-demo) on a fresh database and free ports, with Python's
    default buffering for its output (as in a user's shell: no PYTHONUNBUFFERED); and the base
    URL of its API."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["DATABASE_URL"] = _database_url()
    api_port = free_port()
    argv = [sys.executable, "-m", "sdsaas.devstack"]
    argv += ["--api-port", str(api_port), "--aws-port", str(free_port())]
    return argv, env, f"http://127.0.0.1:{api_port}/v1"


@contextlib.contextmanager
def serving(argv: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    """The stack running, its output in a pipe; terminated on the way out if still running."""
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process, Output(process)
    finally:
        if process.poll() is None:
            process.terminate()  # it stops what it started, as on Ctrl-C
            process.wait(timeout=60)


def submit_status(url: str, key: str, body: dict[str, Any]) -> int:
    try:
        call("POST", url, key, body)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 202


def test_make_run_serves_completes_what_was_in_flight_when_restarted_and_runs_headless() -> None:
    """Three runs of one stack on one database: serving, stopped with jobs in flight; serving
    again, which completes them, until its demo key is spent; then headless, at once."""
    # given `make run` serving (no --exit-after-demo) on a fresh database, its output in a pipe
    argv, env, base = devstack_command()
    with serving(argv, env) as (first, output):
        # then its progress comes through the pipe as it is printed, while it runs: the first
        # line at once, the demo key, then the line that says it serves
        output.until("started moto_server", 60)
        key = output.until("demo API key (shown once): sk_live_", 240).split(": ", 1)[1].strip()
        output.until("serving; Ctrl-C stops everything", 30)

        # and the demo model serves 512x512 with its default steps, in seconds
        body = {"model": "tiny", "prompt": "a lighthouse", "width": 512, "height": 512}
        job = call("POST", f"{base}/jobs", key, body)
        deadline = time.monotonic() + 60
        while job["status"] not in {"succeeded", "failed", "canceled"}:
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
            job = call("GET", job["urls"]["get"], key)
        assert job["status"] == "succeeded", job
        with urllib.request.urlopen(job["output"][0], timeout=10) as response:
            assert Image.open(io.BytesIO(response.read())).size == (512, 512)

        # when the demo tenant submits four jobs (two admitted, its cap) and the stack's own
        # tenant one (its one slot, which the next run's demo job needs), and the stack
        # is stopped with Ctrl-C at once, while they are in flight
        _, own_key = api_key_issue(tenant=Tenant.objects.get(name="devstack"), name="test")
        ids = [
            call("POST", f"{base}/jobs", key, {"model": "tiny", "prompt": prompt})["id"]
            for prompt in ("a fox", "an owl", "a cat", "a jay")
        ]
        own = {"model": "tiny", "prompt": "a moth", "width": 256, "height": 256}
        ids += [call("POST", f"{base}/jobs", own_key, own)["id"]]
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=60) == 0
        output.until("stopping", 10)
    # (the stop took their messages with it: the local SQS server keeps nothing)
    admitted = set(
        Job.objects.filter(public_id__in=ids, status__in=Job.IN_FLIGHT).values_list(
            "public_id", flat=True
        )
    )
    at_stop = dict(Job.objects.filter(public_id__in=ids).values_list("public_id", "status"))
    assert ids[-1] in admitted, ("the stack's own job must hold its tenant's slot", ids, at_stop)
    # (an admitted job whose background publish the stop cut short is the sweeper's to publish;
    # the others' messages are gone, and the reconciler publishes them again)
    unpublished = set(
        Job.objects.filter(public_id__in=admitted, published_at__isnull=True).values_list(
            "public_id", flat=True
        )
    )

    # when it runs again
    started = time.monotonic()
    with serving(argv, env) as (second, output):
        # then its demo job completes: the job that held its tenant's slot was published (again)
        # and ran (`make run` gives up on its demo after 300 s)
        demo = output.until("demo job job_", 240).split()[2]
        output.until("demo image saved to", 180)
        assert Job.objects.get(public_id=demo).status == Job.Status.SUCCEEDED
        # and every job of the first run completes: the admitted ones published (again), the
        # queued ones admitted in their turn
        deadline = time.monotonic() + 120
        while Job.objects.filter(public_id__in=ids).exclude(status__in=Job.FINAL).exists():
            assert time.monotonic() < deadline, list(Job.objects.values_list("public_id", "status"))
            time.sleep(0.5)
        statuses = dict(Job.objects.filter(public_id__in=ids).values_list("public_id", "status"))
        assert statuses == dict.fromkeys(ids, Job.Status.SUCCEEDED), statuses
        republished = set(
            JobEvent.objects.filter(job__public_id__in=ids, kind="republished").values_list(
                "job__public_id", flat=True
            )
        )
        assert republished == admitted - unpublished
        print(f"restarted with {len(admitted)} jobs in flight: {time.monotonic() - started:.0f} s")

        # when the demo key spends its tenant's write rate limit on a burst of jobs
        output.until("serving; Ctrl-C stops everything", 30)
        statuses_of_burst = [submit_status(f"{base}/jobs", key, {"model": "tiny", "prompt": "x"})]
        while statuses_of_burst[-1] != 429 and len(statuses_of_burst) < 200:
            statuses_of_burst.append(
                submit_status(f"{base}/jobs", key, {"model": "tiny", "prompt": "x"})
            )
        assert statuses_of_burst[-1] == 429, statuses_of_burst
        assert set(statuses_of_burst[:-1]) == {202}, statuses_of_burst
        # and it stays spent for the next minutes (the next run may begin in another window)
        demo_tenant = Tenant.objects.get(name="demo")
        minute = timezone.now().replace(second=0, microsecond=0)
        for ahead in range(5):
            RateWindow.objects.update_or_create(
                tenant=demo_tenant,
                window_start=minute + dt.timedelta(minutes=ahead),
                defaults={"count": demo_tenant.plan.requests_per_minute},
            )
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=60) == 0

    # when it runs again at once, headless
    done = subprocess.run(
        [*argv, "--exit-after-demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    # then its demo succeeds all the same, its PNG is where it says, the model built by the
    # first run is used as it is, and everything was stopped again
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"status": "succeeded"' in done.stdout
    saved = Path(done.stdout.split("demo image saved to ")[1].split()[0])
    with Image.open(saved) as image:
        assert image.format == "PNG"
        assert image.size == (64, 64)
    assert "demo API key (shown once): sk_live_" in done.stdout
    assert "building the tiny test model" not in done.stdout
    assert "stopping" in done.stdout
