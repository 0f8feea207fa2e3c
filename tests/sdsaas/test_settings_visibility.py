"""Visibility timings that would let a running job be delivered twice stop every process at
start-up, with a message naming the settings that contradict each other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SHOW = (
    "from django.conf import settings as s; print(s.SQS_VISIBILITY_TIMEOUT, s.GPU_HEARTBEAT_S,"
    " s.GPU_OUTAGE_TOLERANCE_S, s.GPU_JOB_TIME_LIMIT_S)"
)


def start(**env: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh process, as every service does at start-up."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SDSAAS_")}
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {SHOW}"],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "sdsaas.settings", "SDSAAS_DEBUG": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"SDSAAS_SQS_VISIBILITY_TIMEOUT": "60", "SDSAAS_GPU_HEARTBEAT_S": "30"},
            ("SDSAAS_GPU_HEARTBEAT_S (30)", "SDSAAS_SQS_VISIBILITY_TIMEOUT (60)"),
        ),
        (
            {"SDSAAS_GPU_OUTAGE_TOLERANCE_S": "300"},
            ("SDSAAS_GPU_OUTAGE_TOLERANCE_S (300)", "SDSAAS_SQS_VISIBILITY_TIMEOUT (60)"),
        ),
        (
            {"SDSAAS_SQS_VISIBILITY_TIMEOUT": "30", "SDSAAS_GPU_OUTAGE_TOLERANCE_S": "25"},
            ("SDSAAS_GPU_OUTAGE_TOLERANCE_S (25)", "SDSAAS_SQS_VISIBILITY_TIMEOUT (30)"),
        ),
        (
            {"SDSAAS_GPU_JOB_TIME_LIMIT_S": "43200"},
            ("SDSAAS_GPU_JOB_TIME_LIMIT_S (43200)", "SDSAAS_SQS_VISIBILITY_TIMEOUT (60)"),
        ),
    ],
    ids=["heartbeat-too-slow", "tolerance-too-long", "tolerance-vs-short-base", "time-limit"],
)
def test_contradictory_timings_are_refused_at_start_up_naming_both_settings(
    env: dict[str, str], named: tuple[str, str]
) -> None:
    # when a process starts with timings under which a running job's message could reappear
    done = start(**env)
    # then it stops with ImproperlyConfigured naming both settings and their values
    assert done.returncode != 0, done.stdout
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured"), done.stderr
    for name in named:
        assert name in last_line


def test_a_short_base_timeout_alone_gets_a_heartbeat_and_tolerance_that_fit_it() -> None:
    # given only a short base visibility timeout (as in the end-to-end tests)
    done = start(SDSAAS_SQS_VISIBILITY_TIMEOUT="6")
    # then the process starts, with a 1 s heartbeat and the 4 s of outage it can hold through
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["6", "1", "4", "1800"]


def test_the_defaults_start() -> None:
    done = start()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["60", "10", "40", "1800"]


@pytest.mark.parametrize("wait_s", ["0", "21"])
def test_a_long_poll_sqs_does_not_allow_is_refused_at_start_up(wait_s: str) -> None:
    # when a process starts with a receive wait outside 1-20 s (0 would spin: no client pause)
    done = start(SDSAAS_SQS_WAIT_TIME_S=wait_s)
    # then it stops, naming the setting and the value
    assert done.returncode != 0, done.stdout
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured"), done.stderr
    assert "SDSAAS_SQS_WAIT_TIME_S must be" in last_line and wait_s in last_line
