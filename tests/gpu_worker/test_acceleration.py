"""The worker's speed-up options (gpu_worker/acceleration.py) on the CPU, with the tiny model:
each option that works on the CPU keeps the images of stock diffusers for the same seed.

Tolerance: at most 2 of 255 on any channel of any pixel and under 0.05 on average (the same
bound as test_inference.py's `close`). Everything here is fp32: channels-last and fused QKV
change the order of the sums in convolutions and matrix products (differences around 1e-6
before the 8-bit quantisation), which can flip a value that sits on a rounding boundary by one
step, rarely two after the steps compound; a real change of the computation (a wrong
processor, a LoRA that stopped acting, another scheduler or prompt) moves most pixels by far
more. On the GPU (fp16) the benchmark reports the difference instead (bench/inference.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from gpu_worker import acceleration, inference
from gpu_worker.build_model import build, build_lora
from sdsaas.contract import Scheduler

CPU = torch.device("cpu")
PROMPT = "a red fox in the snow"
SEED = 7
# torch.compile of the tiny model on 2 busy cores took 35-200 s cold (6 s from the on-disk
# cache): too slow for every run of the suite. SDSAAS_TEST_COMPILE=1 runs it.
COMPILE = os.environ.get("SDSAAS_TEST_COMPILE") == "1"


def request(**fields: object) -> inference.Request:
    base: dict[str, object] = {
        "prompt": PROMPT,
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 4,
        "guidance": 7.5,
        "scheduler": Scheduler.EULER,
        "num_outputs": 1,
        "seed": SEED,
    }
    return inference.Request(**{**base, **fields})  # type: ignore[arg-type]


def as_array(image: object) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a - b)
    assert diff.max() <= 2 and diff.mean() < 0.05, (int(diff.max()), float(diff.mean()))


def stock_pixels(pipeline: Any) -> np.ndarray:
    """Plain diffusers' image: default settings, Euler, the prompt as text, no negative prompt
    (SDXL then zeroes it, as the worker does for an empty one)."""
    pipeline.scheduler = EulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline(
        prompt=PROMPT,
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(SEED),
    ).images[0]
    pixels = as_array(image)
    assert pixels.std() > 5  # an image with content, not a flat one that anything would match
    return pixels


@pytest.fixture(scope="module")
def stock_image(tiny_model_dir: Path) -> np.ndarray:
    return stock_pixels(
        StableDiffusionPipeline.from_pretrained(
            tiny_model_dir, safety_checker=None, requires_safety_checker=False
        )
    )


def worker_image(path: Path, options: tuple[str, ...], **fields: object) -> np.ndarray:
    model = inference.LoadedModel(inference.load_pipeline(str(path), CPU, options))
    return as_array(inference.generate(model, request(**fields))[0])


def test_the_worker_path_with_no_option_gives_stock_diffusers_pixels(
    tiny_model_dir: Path, stock_image: np.ndarray
) -> None:
    # given the worker's loading and generation with no option (its CPU default)
    # when it renders the stock pipeline's seed and input, then the pixels are the same
    assert np.array_equal(worker_image(tiny_model_dir, ()), stock_image)
    assert acceleration.resolve(None, CPU) == ()


@pytest.mark.parametrize(
    "options",
    [("sdpa",), ("fuse_qkv",), ("channels_last",), ("sdpa", "fuse_qkv", "channels_last")],
    ids=lambda options: "+".join(options),
)
def test_each_cpu_option_keeps_the_images_of_stock_diffusers(
    tiny_model_dir: Path, stock_image: np.ndarray, options: tuple[str, ...]
) -> None:
    # given the worker's path with the options, when it renders the same seed and input
    image = worker_image(tiny_model_dir, options)
    # then its image is stock diffusers' within the tolerance (module docstring)
    assert_close(image, stock_image)


@pytest.mark.skipif(
    not COMPILE,
    reason="torch.compile of the tiny model takes 35-200 s on 2 CPU cores; SDSAAS_TEST_COMPILE=1",
)
def test_compiled_unet_keeps_the_images_and_reuses_its_disk_cache(
    tiny_model_dir: Path, stock_image: np.ndarray, tmp_path: Path
) -> None:
    # given the UNet and the VAE decoder compiled, artefacts cached in tmp_path
    cache = tmp_path / "compile-cache"
    model = inference.LoadedModel(
        inference.load_pipeline(str(tiny_model_dir), CPU, ("compile",), compile_cache_dir=cache)
    )
    started = time.perf_counter()
    image = as_array(inference.generate(model, request())[0])
    print(f"first compiled image (compilation included): {time.perf_counter() - started:.1f} s")
    # then the image is stock diffusers' within the tolerance, and the artefacts are on disk
    assert_close(image, stock_image)
    assert any(cache.rglob("*")), "nothing written to the compile cache"


def test_options_are_parsed_strictly_and_applied_in_one_order() -> None:
    assert acceleration.parse("auto") is None and acceleration.parse("") is None
    assert acceleration.parse("none") == ()
    # any order in, OPTIONS order out (sdpa before fuse_qkv: it would replace the fused processor)
    assert acceleration.parse(" Compile, channels_last,sdpa,fuse_qkv ") == (
        "sdpa",
        "fuse_qkv",
        "channels_last",
        "compile",
    )
    with pytest.raises(ValueError, match="flash"):
        acceleration.parse("sdpa,flash")
    # auto: what the worker always did, sdpa and channels-last on CUDA, nothing on the CPU
    assert acceleration.resolve(None, torch.device("cuda")) == ("sdpa", "channels_last")


def test_cuda_graphs_are_skipped_with_a_reason_on_the_cpu(tiny_model_dir: Path) -> None:
    pipeline = inference.read_pipeline(str(tiny_model_dir), CPU)
    applied = acceleration.apply(pipeline, ("cuda_graphs", "sdpa"), CPU)
    assert applied.options == ("sdpa",)
    assert "CUDA" in applied.skipped["cuda_graphs"]


def test_a_lora_acts_on_attention_with_fused_qkv_too(tiny_model_dir: Path, tmp_path: Path) -> None:
    # given a LoRA, and the same job on a plain pipeline and on one with fused QKV projections
    lora = tmp_path / "ink.safetensors"
    build_lora("tiny", lora, seed=3)
    loras = (("ink", str(lora), 1.0),)
    plain = worker_image(tiny_model_dir, (), loras=loras)
    fused = inference.LoadedModel(inference.load_pipeline(str(tiny_model_dir), CPU, ("fuse_qkv",)))
    assert fused.pipeline.fusing_unet
    # when the fused one runs the LoRA job
    image = as_array(inference.generate(fused, request(loras=loras))[0])
    # then the fusion was undone first, so the adapters on to_q/to_k/to_v act: the same image
    assert not fused.pipeline.fusing_unet
    assert_close(image, plain)
    assert np.abs(plain - worker_image(tiny_model_dir, ())).mean() > 1  # the LoRA shows


def test_sdxl_shaped_model_with_every_cpu_option_keeps_stock_sdxl_pixels(tmp_path: Path) -> None:
    # given the SDXL-shaped tiny model and stock StableDiffusionXLPipeline's image
    build("tiny-xl", tmp_path / "tiny-xl")
    stock = StableDiffusionXLPipeline.from_pretrained(tmp_path / "tiny-xl", add_watermarker=False)
    expected = stock_pixels(stock)
    # when the worker renders it with every CPU option, then the pixels stay within tolerance
    image = worker_image(tmp_path / "tiny-xl", ("sdpa", "fuse_qkv", "channels_last"))
    assert_close(image, expected)
