"""The API as it is deployed: gunicorn with sdsaas/gunicorn_conf.py, in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.aws import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).with_name("gunicorn")


@contextmanager
def api_server(log: Path, **env: str) -> Iterator[str]:
    """Serve the API on a free port, with `env` over this environment; yields the base URL.

    One worker process unless `env` sets SDSAAS_API_WORKERS.
    """
    port = free_port()
    environ = {
        **os.environ,
        "SDSAAS_DEBUG": "1",
        "SDSAAS_API_WORKERS": "1",
        **env,
        "SDSAAS_API_BIND": f"127.0.0.1:{port}",
    }
    argv = [str(GUNICORN), "-c", "python:sdsaas.gunicorn_conf", "sdsaas.wsgi"]
    with log.open("ab") as out:
        server = subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
        try:
            try:
                wait_for_port(port)
            except TimeoutError:
                raise AssertionError(f"gunicorn did not start:\n{log.read_text()}") from None
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(timeout=30)
