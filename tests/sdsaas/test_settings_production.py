"""Production settings (debug off, only the variables a deployment must set) pass Django's deploy
checks and behave right behind a TLS-terminating load balancer."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]

# What runs behind the ALB in production: everything else is the settings' own default.
PRODUCTION_ENV = {
    "SDSAAS_SECRET_KEY": secrets.token_urlsafe(50),
    "SDSAAS_ALLOWED_HOSTS": "api.example.com",
    "SDSAAS_PUBLIC_BASE_URL": "https://api.example.com",
    "SDSAAS_WEBHOOK_SECRET_KEYS": Fernet.generate_key().decode(),
    "SDSAAS_DISCORD_TOKEN_KEYS": Fernet.generate_key().decode(),
}

# Requests as the load balancer forwards them, answered by the app in-process.
PROBE = """
import json
from django.test import Client
client = Client(HTTP_HOST="api.example.com")
answers = {}
for name, path, headers in [
    ("health_check_over_http", "/healthz", {}),
    ("api_over_http", "/v1/models", {}),
    ("api_over_https", "/v1/models", {"HTTP_X_FORWARDED_PROTO": "https"}),
]:
    response = client.get(path, **headers)
    answers[name] = {
        "status": response.status_code,
        "location": response.headers.get("Location"),
        "hsts": response.headers.get("Strict-Transport-Security"),
    }
print(json.dumps(answers))
"""


def _manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SDSAAS_")}
    base["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **PRODUCTION_ENV, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deploy_check_passes_with_production_settings(tmp_path: Path) -> None:
    done = _manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues (0 silenced)" in done.stdout


def test_deploy_check_fails_when_a_production_default_is_turned_off(tmp_path: Path) -> None:
    # The check above can fail: with HSTS switched off it reports security.W004.
    done = _manage(
        tmp_path, "check", "--deploy", "--fail-level", "WARNING", SDSAAS_HSTS_SECONDS="0"
    )
    assert done.returncode != 0
    assert "security.W004" in done.stderr


def test_behind_the_load_balancer(tmp_path: Path) -> None:
    done = _manage(tmp_path, "shell", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.splitlines()[-1])
    # the ALB's plain-http health check is answered, not redirected
    assert answers["health_check_over_http"]["status"] == 200
    # a client that reached plain http is sent to https
    assert answers["api_over_http"]["status"] == 301
    assert answers["api_over_http"]["location"] == "https://api.example.com/v1/models"
    # https as the ALB forwards it is served (401: no key), with HSTS
    assert answers["api_over_https"]["status"] == 401
    assert answers["api_over_https"]["hsts"] == "max-age=31536000; includeSubDomains; preload"
