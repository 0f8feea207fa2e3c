"""Pure inference on the tiny SD 1.5-shaped model: schedulers, seeds, long prompts, LRU."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_worker import inference, loading
from gpu_worker.build_model import build_lora
from sdsaas.contract import ModelRef, Scheduler

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> inference.LoadedModel:
    return inference.LoadedModel(inference.load_pipeline(str(tiny_model_dir), CPU))


def request(**fields: Any) -> inference.Request:
    base: dict[str, Any] = {
        "prompt": "a red fox in the snow",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance": 7.5,
        "scheduler": "euler",
        "num_outputs": 1,
        "seed": 1,
    }
    return inference.Request(**{**base, **fields})


def pixels(image: Image.Image) -> bytes:
    return image.tobytes()


def close(a: Image.Image, b: Image.Image) -> bool:
    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    return bool(diff.max() <= 2 and diff.mean() < 0.05)


def test_the_worker_knows_exactly_the_schedulers_of_the_contract() -> None:
    assert set(inference.SCHEDULERS) == set(Scheduler)


@pytest.mark.parametrize("scheduler", sorted(inference.SCHEDULERS))
def test_every_scheduler_generates_an_image_of_the_asked_size(
    model: inference.LoadedModel, scheduler: str
) -> None:
    (image,) = inference.generate(model, request(scheduler=scheduler, width=48, height=64))
    assert image.size == (48, 64)


def test_a_512x512_image_renders_in_seconds(model: inference.LoadedModel) -> None:
    # given the tiny model, which the local stack serves up to 512x512
    # when a 512x512 image is generated (2 steps, each a UNet pass for prompt and negative)
    start = time.perf_counter()
    (image,) = inference.generate(model, request(width=512, height=512, steps=2))
    elapsed = time.perf_counter() - start
    # then it comes in seconds, not minutes (a second or two on two busy cores): a model that
    # spends many channels or attention on the largest latents or pixels takes minutes here
    assert image.size == (512, 512)
    assert elapsed < 30, f"512x512 took {elapsed:.1f} s"


def test_image_i_of_a_batch_is_the_single_image_of_seed_plus_i(
    model: inference.LoadedModel,
) -> None:
    # given a batch of 3 from seed 10, and single images from seeds 10 and 12
    batch = inference.generate(model, request(seed=10, num_outputs=3))
    first = inference.generate(model, request(seed=10))
    third = inference.generate(model, request(seed=12))
    # then each image comes from its own seed, whatever the batch (to the last bit of rounding:
    # batched arithmetic on the CPU may differ there), and the same input gives the same pixels
    assert close(batch[0], first[0])
    assert close(batch[2], third[0])
    assert not close(batch[0], batch[1])
    again = inference.generate(model, request(seed=10, num_outputs=3))
    assert [pixels(image) for image in again] == [pixels(image) for image in batch]


def test_jobs_run_as_one_batch_get_the_images_each_would_get_alone(
    model: inference.LoadedModel,
) -> None:
    # given three jobs of one batch key: different prompts, negatives, seeds and image counts,
    # one prompt long enough for a second window (it cannot share the others' denoising loop)
    long_prompt = " ".join(["a lighthouse on a cliff at dusk"] * 20)
    jobs = [
        request(prompt="a red fox", seed=3, num_outputs=2),
        request(prompt="a paper boat", negative_prompt="blurry", seed=40),
        request(prompt=long_prompt, seed=7),
    ]
    steps: list[tuple[int, int]] = []
    # when they run as a batch
    batched = inference.generate_batch(model, jobs, lambda step, total: steps.append((step, total)))
    # then each job has its own images, as close as batching allows to its run alone
    alone = [inference.generate(model, job) for job in jobs]
    assert [len(images) for images in batched] == [2, 1, 1]
    for mine, reference in zip(batched, alone, strict=True):
        assert all(close(a, b) for a, b in zip(mine, reference, strict=True))
    assert not close(batched[0][0], batched[1][0])
    # and the steps of the two denoising loops (one per prompt length) were reported as one
    # count that never goes back
    assert steps == [(1, 2), (1, 2), (2, 2), (2, 2)]


def test_only_text_to_image_jobs_of_one_size_steps_guidance_scheduler_and_loras_batch() -> None:
    base = inference.batch_key(request())
    assert base is not None
    assert inference.batch_key(request(prompt="other", seed=9, num_outputs=3)) == base
    for different in (
        {"width": 128},
        {"steps": 3},
        {"guidance": 5.0},
        {"scheduler": "dpmpp_2m"},
        {"loras": (("style", "/m/style.safetensors", 0.8),)},
    ):
        assert inference.batch_key(request(**different)) != base, different
    assert inference.batch_key(request(init_image=Image.new("RGB", (64, 64)))) is None
    with pytest.raises(inference.InvalidRequest):
        inference.generate_batch(None, [request(), request(steps=3)])  # type: ignore[arg-type]


def test_a_prompt_past_77_tokens_is_encoded_whole_not_truncated(
    model: inference.LoadedModel,
) -> None:
    # given a prompt of about 200 tokens, and the same prompt cut to its first 75 tokens
    tokenizer = model.pipeline.tokenizer
    long_prompt = "a lighthouse on a cliff at dusk, " * 6
    ids = tokenizer(long_prompt, add_special_tokens=False).input_ids
    assert len(ids) > 150
    cut = tokenizer.decode(ids[:75])
    # when both are encoded
    embeds = inference.encode_prompts(model.pipeline, long_prompt, "")
    # then the long one has a window of 77 positions per 75 tokens, the negative as many
    assert embeds.positive.shape[1] == 77 * -(-len(ids) // 75)
    assert embeds.negative.shape == embeds.positive.shape
    # and the words past the first window change the image
    (whole,) = inference.generate(model, request(prompt=long_prompt))
    (truncated,) = inference.generate(model, request(prompt=cut))
    assert pixels(whole) != pixels(truncated)


def test_a_long_negative_prompt_lengthens_the_positive_to_match(
    model: inference.LoadedModel,
) -> None:
    embeds = inference.encode_prompts(model.pipeline, "a fox", "blurry, " * 60)
    assert embeds.positive.shape == embeds.negative.shape
    assert embeds.positive.shape[1] > 77


def test_img2img_follows_the_input_and_its_strength(model: inference.LoadedModel) -> None:
    # given two very different input images
    red = Image.new("RGB", (64, 64), (250, 10, 10))
    blue = Image.new("RGB", (64, 64), (10, 10, 250))
    # when each is used at a low strength
    (from_red,) = inference.generate(model, request(init_image=red, strength=0.3, steps=4))
    (from_blue,) = inference.generate(model, request(init_image=blue, strength=0.3, steps=4))
    # then the outputs differ by their input, at the asked size
    assert from_red.size == (64, 64)
    assert pixels(from_red) != pixels(from_blue)


def test_the_step_callback_sees_every_step_and_can_stop_the_job(
    model: inference.LoadedModel,
) -> None:
    seen: list[tuple[int, int]] = []
    inference.generate(model, request(steps=5), lambda step, total: seen.append((step, total)))
    assert seen == [(step, 5) for step in range(1, 6)]

    def cancel_at_2(step: int, total: int) -> None:
        if step == 2:
            raise inference.Canceled

    with pytest.raises(inference.Canceled):
        inference.generate(model, request(steps=50), cancel_at_2)


@pytest.fixture
def load_tiny(tiny_model_dir: Path) -> Callable[[], Any]:
    """Loads the tiny pipeline on the CPU, anew at each call (what a cache's `get` is given)."""
    return lambda: inference.load_pipeline(str(tiny_model_dir), CPU)


def test_the_pipeline_cache_evicts_the_least_recently_used_within_its_bytes(
    load_tiny: Callable[[], Any],
) -> None:
    # given a cache with room for two tiny pipelines
    size = inference.pipeline_bytes(load_tiny())
    cache = inference.PipelineCache(max_bytes=2 * size + size // 2)
    # when a, b are loaded, a is used again, and c is loaded
    assert cache.get("a", load_tiny)[1] is True
    assert cache.get("b", load_tiny)[1] is True
    assert cache.get("a", load_tiny)[1] is False
    assert cache.get("c", load_tiny)[1] is True
    # then b, the least recently used, made room; a and c stay
    assert "b" not in cache
    assert "a" in cache and "c" in cache


@pytest.mark.parametrize(
    ("fmt", "pil_format"), [("png", "PNG"), ("webp", "WEBP"), ("jpeg", "JPEG")]
)
def test_every_output_format_carries_the_reproducibility_record(fmt: str, pil_format: str) -> None:
    record = {"seed": 42, "model": {"slug": "tiny"}, "loras": [{"slug": "ink", "weight": 0.5}]}
    data = inference.encode_image(Image.new("RGB", (16, 16), (1, 2, 3)), fmt, record)
    image = Image.open(io.BytesIO(data))
    assert image.format == pil_format
    text = image.text["sdsaas"] if fmt == "png" else image.getexif()[0x010E]
    assert json.loads(text) == record


@pytest.mark.parametrize("scheduler", ["heun", "euler"])
def test_progress_counts_steps_even_for_second_order_schedulers(
    model: inference.LoadedModel, scheduler: str
) -> None:
    seen: list[tuple[int, int]] = []
    inference.generate(
        model, request(steps=4, scheduler=scheduler), lambda step, total: seen.append((step, total))
    )
    assert {total for _, total in seen} == {4}
    assert [step for step, _ in seen] == sorted(step for step, _ in seen)
    assert seen[-1] == (4, 4)


def test_room_is_made_before_a_new_pipeline_is_loaded(
    load_tiny: Callable[[], Any], tiny_model_dir: Path
) -> None:
    # given a cache holding one pipeline, with room for one
    size = inference.pipeline_bytes(load_tiny())
    cache = inference.PipelineCache(max_bytes=size + size // 2)
    cache.get("old", load_tiny)
    # when another is loaded, with its expected size from the files on disk
    held_while_loading: list[bool] = []

    def load_new() -> Any:
        held_while_loading.append("old" in cache)
        return load_tiny()

    expected = inference.weights_bytes(str(tiny_model_dir))
    assert expected >= size // 2
    cache.get("new", load_new, expected_bytes=expected)
    # then the old one was out of the cache before the new one was loaded
    assert held_while_loading == [False]
    assert cache.lookup("new") is not None and cache.lookup("old") is None


def test_the_bytes_held_are_read_without_waiting_for_a_load_under_way(
    load_tiny: Callable[[], Any],
) -> None:
    # given a cache holding one pipeline, loading another on a thread (as a cold start does)
    size = inference.pipeline_bytes(load_tiny())
    cache = inference.PipelineCache(max_bytes=4 * size)
    cache.get("held", load_tiny)
    loading, release = threading.Event(), threading.Event()

    def slow_load() -> Any:
        loading.set()
        release.wait(10)
        return load_tiny()

    thread = threading.Thread(target=cache.get, args=("new", slow_load))
    thread.start()
    try:
        assert loading.wait(10)
        # when the worker's metrics ask what it holds, then they are answered at once
        started = time.monotonic()
        assert cache.bytes_held() == size
        assert time.monotonic() - started < 0.5
    finally:
        release.set()
        thread.join(30)
    # and once loaded, both count; after an eviction (room for a third of 3 x the size), only
    # what is left does
    assert cache.bytes_held() == 2 * size
    cache.get("third", load_tiny, expected_bytes=3 * size)
    assert "held" not in cache and "new" in cache and "third" in cache
    assert cache.bytes_held() == 2 * size


def test_a_lora_that_fails_half_loaded_shapes_no_later_job(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # given a pipeline whose first LoRA runs out of memory loading its text encoder's half, after
    # its UNet's (out of memory is not the request's fault: it is raised as it is)
    failure = torch.OutOfMemoryError("CUDA out of memory (simulated)")
    loaded = inference.LoadedModel(inference.load_pipeline(str(tiny_model_dir), CPU))
    plain = pixels(inference.generate(loaded, request(seed=7))[0])
    lora = tmp_path / "style.safetensors"
    build_lora("tiny", lora, seed=0)
    encoder = loaded.pipeline.text_encoder

    def fails(*args: Any, **kwargs: Any) -> None:
        raise failure

    encoder.load_adapter = fails
    with pytest.raises(type(failure)):
        inference.generate(loaded, request(seed=7, loras=(("style", str(lora), 1.0),)))
    del encoder.load_adapter
    # when another tenant's job without LoRAs runs on it, then its image is the plain one
    assert pixels(inference.generate(loaded, request(seed=7))[0]) == plain
    # and the LoRA loads on its next job
    styled = inference.generate(loaded, request(seed=7, loras=(("style", str(lora), 1.0),)))
    assert pixels(styled[0]) != plain


def test_a_catalog_entry_given_other_weights_under_its_revision_is_not_served_the_old_ones(
    tiny_model_dir: Path,
) -> None:
    # given a model loaded and cached on this worker
    ref = ModelRef("tiny-moved", "sd15", str(tiny_model_dir), "r1", "")
    assert loading.load_model(ref, CPU) is loading.load_model(ref, CPU)
    # when the catalog points the same slug and revision at other weights (gone, here), then the
    # worker loads those, and does not answer with the cached pipeline of the old ones
    moved = ModelRef("tiny-moved", "sd15", str(tiny_model_dir / "gone"), "r1", "")
    with pytest.raises(inference.InvalidRequest):
        loading.load_model(moved, CPU)
