"""`python -m bench.inference --quick`: a smoke test of the harness, not a benchmark.

The tiny model (64x64, 4 steps, fp32 on the CPU), stock diffusers against the worker's path with
each CPU option alone and all together, two rounds; only the shape of the last line is asserted
(it parses, every variant has its figures, the flat figures are positive numbers), never a
timing: on a busy 2-core machine the figures say nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.bench import bench_result

FIGURES = (
    "tiny_stock_p50_s",
    "tiny_best_p50_s",
    "tiny_best_speedup",
    "tiny_best_images_per_s",
    "tiny_stock_images_per_s",
    "repeats",
)
VARIANT_FIGURES = {
    "p50_s",
    "p95_s",
    "mean_s",
    "images_per_s",
    "speedup_vs_stock",
    "speedup_vs_none",
    "pixel_max_diff",
    "pixel_mean_diff",
    "load_s",
    "first_s",
    "compile_s",
}


@pytest.mark.bench_smoke
def test_inference_bench_quick_prints_each_variant_and_its_json_line_last(tmp_path: Path) -> None:
    # Given the quick mode, its weights written into a folder of the test's own
    argv = ["-m", "bench.inference", "--quick", "--models", str(tmp_path / "models")]
    argv += ["--compile-cache", str(tmp_path / "compile-cache")]

    # When it runs, then it succeeds and its last line is the JSON object, figures positive
    result = bench_result(argv, dict(os.environ), FIGURES)
    assert (result["benchmark"], result["mode"], result["device"]) == ("inference", "quick", "cpu")
    tiny = result["shapes"]["tiny"]
    assert (tiny["width"], tiny["height"], tiny["steps"]) == (64, 64, 4)
    # stock, the worker's path with no option, each CPU option alone and all of them together
    assert set(tiny["variants"]) == {"stock", "none", "sdpa", "fuse_qkv", "channels_last", "all"}
    for name, row in tiny["variants"].items():
        assert set(row) >= VARIANT_FIGURES, name
        assert row["pixel_max_diff"] >= 0 and row["p50_s"] > 0, name
    assert tiny["variants"]["all"]["options"] == ["sdpa", "fuse_qkv", "channels_last"]
    assert isinstance(tiny["keep"], list) and tiny["best"] in tiny["variants"]
    assert isinstance(result["tiny_max_pixel_diff"], int)
