"""`python -m bench.batching --quick`: a smoke test of the harness, not a benchmark.

The tiny model (64x64, 4 steps, fp32 on the CPU), four jobs one by one against the same four as
one batch, two rounds; the shape of the last line is asserted, and that each job's image in the
batch is its image alone (within batching's rounding: the bound of the worker's tests), never a
timing: on a busy 2-core machine the figures say nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.bench import bench_result

FIGURES = ("tiny_batch_speedup", "batch", "repeats")


@pytest.mark.bench_smoke
def test_batching_bench_quick_prints_both_sides_and_its_json_line_last(tmp_path: Path) -> None:
    # Given the quick mode, its weights written into a folder of the test's own
    argv = ["-m", "bench.batching", "--quick", "--models", str(tmp_path / "models")]

    # When it runs, then it succeeds and its last line is the JSON object, figures positive
    result = bench_result(argv, dict(os.environ), FIGURES)
    assert (result["benchmark"], result["mode"], result["device"]) == ("batching", "quick", "cpu")
    tiny = result["shapes"]["tiny"]
    assert (tiny["width"], tiny["height"], tiny["steps"], tiny["batch"]) == (64, 64, 4, 4)
    assert tiny["alone_images_per_s"] > 0 and tiny["batch_images_per_s"] > 0
    assert len(tiny["speedup_per_round"]) == 2
    # and the batch made each job's own image
    assert tiny["pixel_max_diff"] <= 2 and tiny["pixel_mean_diff"] < 0.05
