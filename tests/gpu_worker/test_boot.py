"""The GPU worker boots without the web application (issue 10, item 2).

A real worker process (the entry point users run, solo pool, against the local SQS) is observed
once it is ready, through tests/gpu_worker/boot_probe.py, and again after it started anew in place
as the job watchdog restarts it: nothing of `jobs`, `tenants`, DRF or the admin is imported,
Django's app registry is never set up, and its app registers `gpu.generate` alone (beside
Celery's own `celery.*` tasks).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings

from sdsaas.celery import app as celery_app
from tests.support.aws import LocalAws

ROOT = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).parent / "celery"
# Importing torch on a busy 2-core machine takes a while; a worker that boots is ready well within.
BOOT_TIMEOUT_S = 120
# The stop-grace handler's line: the worker's warm shutdown has begun.
STOPPING = "stopping: the running job has"
# A task no worker has, sent only to end a stopping worker's open long poll.
WAKE = "tests.gpu_worker.boot.wake"
WEB_PACKAGES = ("jobs", "tenants", "rest_framework", "drf_spectacular", "django.contrib.admin")


def _boot_gpu_worker(aws: LocalAws, tmp_path: Path) -> tuple[list[dict[str, Any]], str]:
    """Start a GPU worker, wait until it was ready twice (boot, restart), stop it (SIGTERM).

    The record of each boot, and the worker's log.
    """
    out = tmp_path / "boot.json"
    log_path = tmp_path / "gpu.log"
    prefix = f"boot{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "SDSAAS_DEBUG": "1",
        "SDSAAS_SQS_ENDPOINT_URL": aws.endpoint_url,
        "SDSAAS_S3_ENDPOINT_URL": aws.endpoint_url,
        "SDSAAS_SQS_QUEUE_PREFIX": prefix,
        "SDSAAS_S3_BUCKET": settings.S3_BUCKET,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "SDSAAS_MODEL_CACHE_DIR": str(tmp_path / "model-cache"),
        "SDSAAS_BOOT_PROBE_OUT": str(out),
    }
    env.pop("DATABASE_URL", None)
    env.pop("SDSAAS_ROLE", None)  # the entry point sets it
    argv = [str(CELERY), "-A", "tests.gpu_worker.boot_probe", "worker"]
    argv += ["-P", "solo", "-Q", f"{prefix}-model-tiny", "-n", f"boot-{prefix}@%h"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*argv, "--loglevel", "INFO"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 2 * BOOT_TIMEOUT_S
        while len(_records(out)) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_records(out)) == 2, f"the worker did not boot twice:\n{log_path.read_text()}"
        process.send_signal(signal.SIGTERM)
        # A stopping worker waits for the answer of its open long poll (up to wait_time_seconds,
        # to hand back what it returns): once its stop has begun, a message ends that poll now.
        # It is handed back, never run (tests/e2e/test_stop_mid_poll.py).
        while STOPPING not in log_path.read_text() and process.poll() is None:
            assert time.monotonic() < deadline, f"no stop began:\n{log_path.read_text()}"
            time.sleep(0.1)
        celery_app.send_task(WAKE, queue=f"{prefix}-model-tiny")
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log_text = log_path.read_text(errors="replace")
    # A warm shutdown, through the worker's stop-grace handler (which reads settings).
    assert code == 0, log_text
    return _records(out), log_text


def _records(out: Path) -> list[dict[str, Any]]:
    text = out.read_text() if out.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def test_the_gpu_worker_boots_without_the_web_application(
    local_aws: LocalAws, tmp_path: Path
) -> None:
    # Given a GPU worker started the way users start it
    # When it is ready, and again after it started anew in place (as its job watchdog does it)
    records, log = _boot_gpu_worker(local_aws, tmp_path)

    # Then both boots are the GPU worker alone (the second one in the same process)
    assert records[0]["pid"] == records[1]["pid"]
    assert "restarting the worker process" in log
    for record in records:
        _assert_gpu_only(record)
    # (as the worker's own banner says, at each boot)
    banner = re.findall(r"^\s+\. (\S+)$", log, flags=re.MULTILINE)
    assert banner == ["gpu.generate", "gpu.generate"], log
    # And its stop-grace handler ran at the SIGTERM, with the settings it reads
    assert f"{STOPPING} {settings.GPU_STOP_GRACE_S}s to finish" in log, log
    assert "unregistered task" not in log, log
    assert "Traceback" not in log, log


def _assert_gpu_only(record: dict[str, Any]) -> None:
    # Its own app, one job at a time
    assert record["app"] == "sdsaas-gpu"
    assert record["pool"] == "celery.concurrency.solo"
    assert record["prefetch"] == 1
    # And its app registers the GPU task alone, beside Celery's own
    assert [t for t in record["tasks"] if not t.startswith("celery.")] == ["gpu.generate"]
    # And nothing of the web application is imported: no installed app, no shared Celery app
    web = [
        name
        for name in record["modules"]
        if any(name == p or name.startswith(f"{p}.") for p in WEB_PACKAGES)
        or name == "sdsaas.celery"
    ]
    assert web == []
    assert record["django_apps_ready"] is False
    # While what it uses is there: its task and the settings (the storage backend is built at
    # the first job)
    assert {"gpu_worker.tasks", "gpu_worker.app", "sdsaas.settings"} <= set(record["modules"])
