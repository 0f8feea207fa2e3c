"""`make run` headless: the real processes (moto_server, gunicorn, Celery worker and beat)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.support.aws import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_generates_the_demo_image(tmp_path: Path) -> None:
    # given a fresh database and free ports
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    argv = [sys.executable, "-m", "sdsaas.devstack", "--exit-after-demo"]
    ports = ["--api-port", str(free_port()), "--aws-port", str(free_port())]
    # when the stack runs its demo
    done = subprocess.run(
        argv + ports, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    # then the demo job succeeded, its PNG is where it says, and everything was stopped again
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"status": "succeeded"' in done.stdout
    saved = Path(done.stdout.split("demo image saved to ")[1].split()[0])
    with Image.open(saved) as image:
        assert image.format == "PNG"
        assert image.size == (64, 64)
    assert "demo API key (shown once): sk_live_" in done.stdout
    assert "stopping" in done.stdout
