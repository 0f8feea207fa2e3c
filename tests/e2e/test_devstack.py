"""`make run`: the real processes (moto_server, gunicorn, Celery worker and beat), run twice."""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from PIL import Image

from tenants.models import RateWindow, Tenant
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
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def submit_status(url: str, key: str, body: dict[str, Any]) -> int:
    try:
        call("POST", url, key, body)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 202


def test_make_run_serves_then_runs_again_at_once_with_its_demo_key_spent() -> None:
    # given `make run` serving (no --exit-after-demo) on a fresh database, its output in a pipe
    # and Python's default buffering for it (as in a user's shell: no PYTHONUNBUFFERED)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["DATABASE_URL"] = _database_url()
    api_port = free_port()
    argv = [sys.executable, "-m", "sdsaas.devstack"]
    argv += ["--api-port", str(api_port), "--aws-port", str(free_port())]
    base = f"http://127.0.0.1:{api_port}/v1"
    serving = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output = Output(serving)
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

        # when the demo key spends its tenant's write rate limit on a burst of jobs
        statuses = [submit_status(f"{base}/jobs", key, {"model": "tiny", "prompt": "a fox"})]
        while statuses[-1] != 429 and len(statuses) < 200:
            statuses.append(
                submit_status(f"{base}/jobs", key, {"model": "tiny", "prompt": "a fox"})
            )
        assert statuses[-1] == 429 and set(statuses[:-1]) == {202}, statuses
        # and it stays spent for the next minutes (the next run may begin in another window)
        demo = Tenant.objects.get(name="demo")
        minute = timezone.now().replace(second=0, microsecond=0)
        for ahead in range(5):
            RateWindow.objects.update_or_create(
                tenant=demo,
                window_start=minute + dt.timedelta(minutes=ahead),
                defaults={"count": demo.plan.requests_per_minute},
            )
        # and the stack is stopped with Ctrl-C
        serving.send_signal(signal.SIGINT)
        assert serving.wait(timeout=60) == 0
        output.until("stopping", 10)
    finally:
        if serving.poll() is None:
            serving.terminate()  # it stops what it started, as on Ctrl-C
            serving.wait(timeout=60)

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
