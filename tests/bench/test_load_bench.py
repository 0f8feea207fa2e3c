"""`python -m bench.load --quick`: a smoke test of the harness, not a benchmark.

The tiny model, one round of each medium (page cache cold and warm, S3 from a moto_server the
benchmark starts): only the shape of the last line is asserted (it parses, every medium has its
phases and its baseline, figures positive), never a timing and never the goal.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.bench import bench_result

MEDIA = ("disk_cold", "disk_warm", "s3")
FIGURES = tuple(f"tiny_{m}_{f}" for m in MEDIA for f in ("total_s", "on_device_ratio"))
PHASES = ("import_s", "read_s", "to_device_s", "warm_up_s", "first_inference_s", "total_s")


@pytest.mark.bench_smoke
def test_load_bench_quick_times_each_phase_and_prints_its_json_line_last(tmp_path: Path) -> None:
    # Given the quick mode, its weights written into a folder of the test's own
    argv = ["-m", "bench.load", "--quick", "--models", str(tmp_path / "models")]

    # When it runs, then it succeeds and its last line is the JSON object, figures positive
    result = bench_result(argv, dict(os.environ), FIGURES)
    assert (result["benchmark"], result["mode"], result["goal_ratio"]) == ("load", "quick", 1.5)
    media = result["shapes"]["tiny"]["media"]
    assert set(media) == {"disk-cold", "disk-warm", "s3"}
    for name, row in media.items():
        for phase in PHASES:
            assert row[phase] > 0, (name, phase)
        assert row["raw_read_s"] > 0 and row["raw_bytes"] > 0, name
        assert isinstance(row["goal_met"], bool), name
    # S3 is downloaded, and its baseline (a plain GET) reads the same bytes as the disk's
    assert media["s3"]["download_s"] > 0
    assert media["s3"]["raw_bytes"] == media["disk-warm"]["raw_bytes"]
    # whether the cold read was cold is said, not assumed
    assert "evicted" in media["disk-cold"]
