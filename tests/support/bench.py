"""A benchmark run as a user runs it, for the smoke tests of tests/bench/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def bench_result(argv: list[str], env: dict[str, str], figures: tuple[str, ...]) -> dict[str, Any]:
    """Run `python <argv>`; it must succeed, its last line must be one JSON object and each of
    `figures` in it a positive number. That object."""
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env={**env, "SDSAAS_DEBUG": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    for name in figures:
        value = result[name]
        assert isinstance(value, int | float) and not isinstance(value, bool), (name, value)
        assert value > 0, (name, value)
    return result
