from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "bench_smoke: runs a benchmark's harness end to end at its smallest; asserts the shape of "
        "its output, never a timing (deselect with -m 'not bench_smoke')",
    )
