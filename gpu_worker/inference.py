"""Pure inference: no Django. Load a pipeline once, generate many; the seed decides the image.

Determinism: every image `i` of a job uses its own CPU generator seeded `seed + i`, so the same
input gives the same pixels on the same device and software versions, whatever the batch size.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    UniPCMultistepScheduler,
)
from PIL import Image, PngImagePlugin

logger = logging.getLogger(__name__)

SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "unipc": (UniPCMultistepScheduler, {}),
}


class Canceled(Exception):
    """Raised from the step callback when the job was canceled; no images are produced."""


class InvalidRequest(Exception):
    """The input cannot be generated (final: retrying gives the same result)."""


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    num_outputs: int
    seed: int
    init_image: Image.Image | None = None
    strength: float = 0.8
    loras: tuple[tuple[str, str, float], ...] = field(default_factory=tuple)  # slug, path, weight


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_pipeline(path: str, device: torch.device) -> StableDiffusionPipeline:
    """Load a diffusers folder: fp16, SDPA attention and channels-last on CUDA; fp32 on CPU."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipeline = StableDiffusionPipeline.from_pretrained(
        path, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    if device.type == "cuda":
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipeline.unet.set_attn_processor(AttnProcessor2_0())
        pipeline.vae.set_attn_processor(AttnProcessor2_0())
        pipeline.unet.to(memory_format=torch.channels_last)
    return pipeline.to(device)


def pipeline_bytes(pipeline: DiffusionPipeline) -> int:
    total = 0
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in component.parameters())
    return total


@dataclass
class LoadedModel:
    """A pipeline in memory and the LoRA adapters loaded into it so far."""

    pipeline: StableDiffusionPipeline
    adapters: set[str] = field(default_factory=set)

    def apply_loras(self, loras: tuple[tuple[str, str, float], ...]) -> None:
        for slug, path, _ in loras:
            if slug not in self.adapters:
                self.pipeline.load_lora_weights(path, adapter_name=slug)
                self.adapters.add(slug)
        if loras:
            self.pipeline.enable_lora()
            self.pipeline.set_adapters(
                [slug for slug, _, _ in loras], adapter_weights=[w for _, _, w in loras]
            )
        elif self.adapters:
            self.pipeline.disable_lora()


class PipelineCache:
    """Loaded pipelines, least recently used first out, bounded by their weights' bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[LoadedModel, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, key: str, load: Callable[[], StableDiffusionPipeline]
    ) -> tuple[LoadedModel, bool]:
        """(model, loaded_now): the cached model, or `load()` after evicting what must go."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0], False
            pipeline = load()
            size = pipeline_bytes(pipeline)
            while self._items and sum(s for _, s in self._items.values()) + size > self.max_bytes:
                evicted, _ = self._items.popitem(last=False)
                logger.info("evicted pipeline %s from the cache", evicted)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            model = LoadedModel(pipeline)
            self._items[key] = (model, size)
            return model, True

    def __contains__(self, key: str) -> bool:
        return key in self._items


def _encode_chunks(
    pipeline: StableDiffusionPipeline, text: str, chunks: int | None
) -> torch.Tensor:
    """Embed text of any length: 75-token windows, each wrapped in BOS/EOS, concatenated.

    The text encoder sees at most 77 positions; longer prompts are split instead of truncated.
    """
    tokenizer = pipeline.tokenizer
    window = tokenizer.model_max_length - 2
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
    pieces = [ids[i : i + window] for i in range(0, len(ids), window)] or [[]]
    if chunks is not None:
        pieces += [[] for _ in range(chunks - len(pieces))]
    embeddings = []
    device = pipeline.text_encoder.device
    for piece in pieces:
        padded = [tokenizer.bos_token_id, *piece, tokenizer.eos_token_id]
        padded += [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(padded))
        tokens = torch.tensor([padded], device=device)
        embeddings.append(pipeline.text_encoder(tokens)[0])
    return torch.cat(embeddings, dim=1)


def encode_prompts(
    pipeline: StableDiffusionPipeline, prompt: str, negative: str
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        positive = _encode_chunks(pipeline, prompt, None)
        chunks = positive.shape[1] // pipeline.tokenizer.model_max_length
        negative_embeds = _encode_chunks(pipeline, negative, chunks)
        if negative_embeds.shape[1] > positive.shape[1]:
            extra = negative_embeds.shape[1] // pipeline.tokenizer.model_max_length
            positive = _encode_chunks(pipeline, prompt, extra)
    return positive, negative_embeds


def generate(
    model: LoadedModel,
    request: Request,
    on_step: Callable[[int, int], None] = lambda step, total: None,
) -> list[Image.Image]:
    """Run one job; `on_step(step, total)` runs after each denoising step and may raise Canceled."""
    if request.scheduler not in SCHEDULERS:
        raise InvalidRequest(f"unknown scheduler {request.scheduler!r}")
    scheduler_class, options = SCHEDULERS[request.scheduler]
    pipeline = model.pipeline
    pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config, **options)
    model.apply_loras(request.loras)
    positive, negative = encode_prompts(pipeline, request.prompt, request.negative_prompt)
    generators = [
        torch.Generator("cpu").manual_seed(request.seed + i) for i in range(request.num_outputs)
    ]
    common: dict[str, Any] = {
        "prompt_embeds": positive.repeat(request.num_outputs, 1, 1),
        "negative_prompt_embeds": negative.repeat(request.num_outputs, 1, 1),
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance,
        "generator": generators,
        "output_type": "pil",
    }
    total = request.steps

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        on_step(step + 1, total)
        return kwargs

    common["callback_on_step_end"] = callback
    if request.init_image is None:
        result = pipeline(width=request.width, height=request.height, **common)
    else:
        img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipeline)
        init = request.init_image.convert("RGB").resize((request.width, request.height))
        total = max(1, int(request.steps * request.strength))
        result = img2img(image=init, strength=request.strength, **common)
    return list(result.images)


def encode_image(image: Image.Image, fmt: str, record: dict[str, Any]) -> bytes:
    """PNG (default), WebP or JPEG, with the reproducibility record embedded as JSON."""
    text = json.dumps(record, sort_keys=True)
    buffer = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("sdsaas", text)
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        exif[0x010E] = text  # ImageDescription
        image.save(buffer, format="WEBP" if fmt == "webp" else "JPEG", exif=exif, quality=95)
    return buffer.getvalue()
