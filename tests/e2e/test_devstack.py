"""`make run` headless: the real processes (moto_server, gunicorn, Celery worker and beat)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.aws import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_starts_the_stack_and_accepts_the_demo_job(tmp_path: Path) -> None:
    # given a fresh database and free ports
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    argv = [sys.executable, "-m", "sdsaas.devstack", "--exit-after-demo"]
    ports = ["--api-port", str(free_port()), "--aws-port", str(free_port())]
    # when the stack runs its demo
    done = subprocess.run(
        argv + ports, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    # then the demo job was accepted and admitted, and everything was stopped again
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo job job_" in done.stdout
    assert '"status": "starting"' in done.stdout
    assert "demo API key (shown once): sk_live_" in done.stdout
    assert "stopping" in done.stdout
