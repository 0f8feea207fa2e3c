"""Pure inference: no Django. Load a pipeline once, generate many; the seed decides the image.

SD 1.x/2.x (`StableDiffusionPipeline`) and SDXL (`StableDiffusionXLPipeline`) folders go through
the same functions: the folder's `model_index.json` says which pipeline class loads it.

Determinism: every image `i` of a job uses its own CPU generator seeded `seed + i`, so the same
input gives the same pixels on the same device and software versions, whatever the batch size.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UniPCMultistepScheduler,
)
from PIL import Image, PngImagePlugin

from gpu_worker import acceleration
from gpu_worker.prompts import Pipeline, encode_prompts
from sdsaas.contract import DEFAULT_STRENGTH, OutputFormat, Scheduler

logger = logging.getLogger(__name__)

# The contract's scheduler names -> the diffusers class and its options.
SCHEDULERS: dict[Scheduler, tuple[Any, dict[str, Any]]] = {
    Scheduler.DDIM: (DDIMScheduler, {}),
    Scheduler.DPMPP_2M: (DPMSolverMultistepScheduler, {}),
    Scheduler.DPMPP_2M_KARRAS: (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    Scheduler.EULER: (EulerDiscreteScheduler, {}),
    Scheduler.EULER_A: (EulerAncestralDiscreteScheduler, {}),
    Scheduler.HEUN: (HeunDiscreteScheduler, {}),
    Scheduler.LMS: (LMSDiscreteScheduler, {}),
    Scheduler.PNDM: (PNDMScheduler, {"skip_prk_steps": True}),
    Scheduler.UNIPC: (UniPCMultistepScheduler, {}),
}


class Canceled(Exception):
    """Raised from the step callback when the job was canceled; no images are produced."""


class InvalidRequest(Exception):
    """The input cannot be generated (final: retrying gives the same result)."""


LoraFiles: TypeAlias = tuple[tuple[str, str, float], ...]  # slug, local path, weight


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: Scheduler
    num_outputs: int
    seed: int
    init_image: Image.Image | None = None
    strength: float = DEFAULT_STRENGTH
    loras: LoraFiles = ()


# `_class_name` in model_index.json → the class that loads the folder, and what it is loaded
# with. No safety checker: moderation, if any, is the service's business, not the pipeline's.
# No invisible watermark: the pixels would depend on whether an optional package happens to be
# installed on the worker, and the same request must give the same image everywhere.
PIPELINES: dict[str, tuple[Any, dict[str, Any]]] = {
    "StableDiffusionPipeline": (
        StableDiffusionPipeline,
        {"safety_checker": None, "requires_safety_checker": False},
    ),
    "StableDiffusionXLPipeline": (StableDiffusionXLPipeline, {"add_watermarker": False}),
}


def out_of_memory(exc: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; torch's CPU allocator raises a plain RuntimeError."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate" in str(exc)


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pipeline_class(path: str) -> tuple[Any, dict[str, Any]]:
    """The class that loads the diffusers folder `path`, and its loading options."""
    try:
        class_name = json.loads((Path(path) / "model_index.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"no readable model_index.json in {path}") from exc
    if not isinstance(class_name, str) or class_name not in PIPELINES:
        raise InvalidRequest(
            f"unsupported pipeline {class_name!r}; supported: {', '.join(sorted(PIPELINES))}"
        )
    return PIPELINES[class_name]


def load_pipeline(
    path: str,
    device: torch.device,
    optimizations: Sequence[str] | None = None,
    *,
    compile_cache_dir: Path | str | None = None,
) -> Pipeline:
    """Load a diffusers folder onto `device` and apply `optimizations` (gpu_worker.acceleration's
    option names; None: its default for the device, SDPA and channels-last on CUDA, none on
    the CPU). The three steps are separate functions so that bench/load.py can time each."""
    pipeline = read_pipeline(path, device)
    pipeline.to(device)
    names = acceleration.resolve(optimizations, device)
    acceleration.apply(pipeline, names, device, compile_cache_dir=compile_cache_dir)
    return pipeline


def read_pipeline(path: str, device: torch.device) -> Pipeline:
    """The pipeline of a diffusers folder in host memory: fp16 for CUDA, fp32 for the CPU."""
    cls, options = pipeline_class(path)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipeline = cls.from_pretrained(path, dtype=dtype, **options)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def weights_bytes(path: str) -> int:
    """Bytes of a diffusers folder's weight files: what loading it will take, roughly."""
    return sum(f.stat().st_size for f in Path(path).rglob("*.safetensors"))


def pipeline_bytes(pipeline: DiffusionPipeline) -> int:
    total = 0
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in component.parameters())
    return total


# LoRAs kept loaded in a pipeline beyond those of the current job (least recently used go first).
MAX_IDLE_ADAPTERS = 8


@dataclass
class LoadedModel:
    """A pipeline in memory and the LoRA adapters loaded into it so far."""

    pipeline: Pipeline
    # slug -> the file it was loaded from, least recently used first.
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)
    # The scheduler config the model was saved with. Each job's scheduler is built from it,
    # not from the last job's: options such as Karras sigmas would otherwise carry over to the
    # next job's scheduler, and the same request would give other pixels after another job.
    scheduler_config: Any = field(init=False)

    def __post_init__(self) -> None:
        self.scheduler_config = self.pipeline.scheduler.config

    def apply_loras(self, loras: tuple[tuple[str, str, float], ...]) -> None:
        if loras:
            acceleration.prepare_for_loras(self.pipeline)
        for slug, path, _ in loras:
            if self.adapters.get(slug) != path:  # new, or its file changed in the catalog
                if slug in self.adapters:
                    self._unload(slug)
                self._load_lora(slug, path)
            self.adapters.move_to_end(slug)
        wanted = {slug for slug, _, _ in loras}
        idle = [slug for slug in self.adapters if slug not in wanted]
        for slug in idle[: max(0, len(idle) - MAX_IDLE_ADAPTERS)]:
            self._unload(slug)  # memory grows with every LoRA a worker sees, unless bounded
        if loras:
            self.pipeline.enable_lora()
            self.pipeline.set_adapters(
                [slug for slug, _, _ in loras], adapter_weights=[w for _, _, w in loras]
            )
        elif any(self.pipeline.get_list_adapters().values()):
            # What the pipeline holds, not only what `adapters` knows: no other job's LoRA, or
            # part of one, may ever shape this job's images.
            self.pipeline.disable_lora()

    def _unload(self, slug: str) -> None:
        self.pipeline.delete_adapters([slug])
        del self.adapters[slug]

    def _load_lora(self, slug: str, path: str) -> None:
        try:
            with warnings.catch_warnings():
                # peft warns when a model gets a second adapter: this one holds several on purpose
                # (the recent ones, by name: `apply_loras`).
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                self.pipeline.load_lora_weights(path, adapter_name=slug)
        except Exception as exc:
            # A LoRA half loaded (UNet yes, text encoder no), whatever stopped it, would stay
            # active in the pipeline unknown to `adapters`, and block its name for good.
            if any(slug in names for names in self.pipeline.get_list_adapters().values()):
                self.pipeline.delete_adapters([slug])
            if out_of_memory(exc) or not isinstance(
                exc, (RuntimeError, ValueError, KeyError, OSError)
            ):
                raise  # out of memory stays out of memory; anything else is a bug
            raise InvalidRequest(
                f"LoRA {slug!r} does not fit this model ({exc.__class__.__name__})"
            ) from exc
        self.adapters[slug] = path


class PipelineCache:
    """Loaded pipelines, least recently used first out, bounded by their weights' bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[LoadedModel, int]] = OrderedDict()
        self._lock = threading.Lock()  # held across a load (minutes, with a compile)
        # The bytes held, kept beside the items: read without the lock (a metrics scrape must not
        # wait for a load to end).
        self._bytes = 0

    def get(
        self, key: str, load: Callable[[], Pipeline], expected_bytes: int = 0
    ) -> tuple[LoadedModel, bool]:
        """(model, loaded_now): the cached model, or `load()` after evicting what must go.

        Room for `expected_bytes` is made before loading, so that the old and the new weights are
        not both on the GPU at once; the real size is settled after.
        """
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0], False
            self._evict_until(self.max_bytes - expected_bytes)
            pipeline = load()
            size = pipeline_bytes(pipeline)
            self._evict_until(self.max_bytes - size)
            model = LoadedModel(pipeline)
            self._items[key] = (model, size)
            self._bytes += size
            return model, True

    def lookup(self, key: str) -> LoadedModel | None:
        """The cached model, now the most recently used, or None."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def _evict_until(self, room: int) -> None:
        evicted = False
        while self._items and self._bytes > room:
            key, (_, size) = self._items.popitem(last=False)
            self._bytes -= size
            logger.info("evicted pipeline %s from the cache", key)
            evicted = True
        if evicted:
            gc.collect()  # the pipeline's tensors go with its last reference
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def bytes_held(self) -> int:
        """The weights' bytes of the pipelines held; it does not wait for a load under way."""
        return self._bytes


def _img2img(pipeline: Pipeline) -> Any:
    """The image-to-image pipeline over the same modules (and LoRAs): no second copy."""
    if isinstance(pipeline, StableDiffusionXLPipeline):
        img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(pipeline, add_watermarker=False)
    else:
        img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipeline)
    img2img.set_progress_bar_config(disable=True)  # a new pipeline has its bar on again
    return img2img


def batch_key(request: Request) -> tuple[Any, ...] | None:
    """What text-to-image requests must share to run as one batch (None: never batched)."""
    if request.init_image is not None:
        return None
    return (
        request.width,
        request.height,
        request.steps,
        request.guidance,
        request.scheduler,
        request.loras,
    )


def generate(
    model: LoadedModel,
    request: Request,
    on_step: Callable[[int, int], None] = lambda step, total: None,
) -> list[Image.Image]:
    """Run one job; `on_step(step, total)` runs after each denoising step and may raise Canceled."""
    pipeline = _prepared(model, request)
    embeds = encode_prompts(pipeline, request.prompt, request.negative_prompt)
    common = _denoising(request, embeds.pipeline_kwargs(request.num_outputs), _generators(request))
    if request.init_image is None:
        common["callback_on_step_end"] = _step_callback(request.steps, on_step)
        result = pipeline(width=request.width, height=request.height, **common)
    else:
        img2img = _img2img(pipeline)
        init = request.init_image.convert("RGB").resize((request.width, request.height))
        total = max(1, int(request.steps * request.strength))
        common["callback_on_step_end"] = _step_callback(total, on_step)
        result = img2img(image=init, strength=request.strength, **common)
    return list(result.images)


def generate_batch(
    model: LoadedModel,
    requests: list[Request],
    on_step: Callable[[int, int], None] = lambda step, total: None,
) -> list[list[Image.Image]]:
    """Run text-to-image jobs of one `batch_key` as one denoising loop: each job's images, in
    order, as `generate` would have made them alone (the same seeds; numerically close, not
    bit for bit, since batched kernels sum in another order).

    Prompts that embed to different lengths (over 75 tokens: more windows) cannot share a batch
    without changing what they condition on, so each length runs as its own batch; `on_step`
    counts the steps of those loops together, as `total` steps.
    """
    keys = {batch_key(request) for request in requests}
    if len(keys) != 1 or None in keys:
        raise InvalidRequest("these jobs cannot run as one batch")
    pipeline = _prepared(model, requests[0])
    embeds = [encode_prompts(pipeline, r.prompt, r.negative_prompt) for r in requests]
    images: list[list[Image.Image]] = [[] for _ in requests]
    by_length: dict[tuple[int, ...], list[int]] = {}
    for index, embed in enumerate(embeds):
        by_length.setdefault(tuple(embed.positive.shape), []).append(index)
    groups = len(by_length)
    for group, indexes in enumerate(by_length.values()):
        parts = [embeds[i].pipeline_kwargs(requests[i].num_outputs) for i in indexes]
        stacked = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
        generators = [g for i in indexes for g in _generators(requests[i])]
        common = _denoising(requests[0], stacked, generators)

        def on_group_step(step: int, total: int, group: int = group) -> None:
            # Steps of all the loops as one count of `total`: progress never goes back.
            on_step(math.ceil((group * total + step) / groups), total)

        common["callback_on_step_end"] = _step_callback(requests[0].steps, on_group_step)
        result = list(pipeline(width=requests[0].width, height=requests[0].height, **common).images)
        for i in indexes:
            images[i], result = result[: requests[i].num_outputs], result[requests[i].num_outputs :]
    return images


def _prepared(model: LoadedModel, request: Request) -> Pipeline:
    """The model's pipeline with the request's scheduler and LoRAs."""
    if request.scheduler not in SCHEDULERS:
        raise InvalidRequest(f"unknown scheduler {request.scheduler!r}")
    scheduler_class, options = SCHEDULERS[request.scheduler]
    pipeline = model.pipeline
    pipeline.scheduler = scheduler_class.from_config(model.scheduler_config, **options)
    model.apply_loras(request.loras)
    return pipeline


def _generators(request: Request) -> list[torch.Generator]:
    """One per image: image i of a job is seeded with its seed + i (its reproducibility record)."""
    seeds = range(request.seed, request.seed + request.num_outputs)
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def _denoising(
    request: Request, embeds: dict[str, torch.Tensor], generators: list[torch.Generator]
) -> dict[str, Any]:
    return {
        **embeds,
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance,
        "generator": generators,
        "output_type": "pil",
    }


def _step_callback(total: int, on_step: Callable[[int, int], None]) -> Callable[..., Any]:
    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        # Second-order schedulers (heun) call back twice per step: report steps, not calls.
        calls = max(1, int(getattr(pipe, "num_timesteps", total) or total))
        on_step(min(total, math.ceil((step + 1) * total / calls)), total)
        return kwargs

    return callback


def encode_image(image: Image.Image, fmt: OutputFormat, record: dict[str, Any]) -> bytes:
    """PNG (default), WebP or JPEG, with the reproducibility record embedded as JSON."""
    text = json.dumps(record, sort_keys=True)
    buffer = io.BytesIO()
    if fmt == OutputFormat.PNG:
        info = PngImagePlugin.PngInfo()
        info.add_text("sdsaas", text)
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        exif[0x010E] = text  # ImageDescription
        image.save(
            buffer, format="WEBP" if fmt == OutputFormat.WEBP else "JPEG", exif=exif, quality=95
        )
    return buffer.getvalue()
