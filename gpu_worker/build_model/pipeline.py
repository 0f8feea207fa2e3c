"""A whole pipeline in diffusers layout, with random weights, saved to a folder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from gpu_worker.build_model.specs import ARCHS, PIPELINE_OPTIONS
from gpu_worker.build_model.text import byte_level_tokenizer, text_encoders
from gpu_worker.model_store import digest


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create parameters in `dtype` from the start: the full-size SDXL weights take 14 GB in
    fp32, and building them in fp32 to cast afterwards would hold both copies at once."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(arch: str, out: Path, *, fp16: bool = False, seed: int = 0) -> str:
    """Write the pipeline to `out`; return its catalog hash (`gpu_worker.model_store.digest`)."""
    spec = ARCHS[arch]
    torch.manual_seed(seed)
    with _default_dtype(torch.float16 if fp16 else torch.float32):
        unet = UNet2DConditionModel(**spec.unet_config())
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **spec.vae)
        encoders = text_encoders(spec)
    scheduler_class, scheduler_config = spec.scheduler
    tokenizers = {
        name.replace("text_encoder", "tokenizer"): byte_level_tokenizer()
        for name in spec.text_names
    }
    pipeline = spec.pipeline(
        vae=vae,
        unet=unet,
        scheduler=scheduler_class.from_config(scheduler_config),
        **encoders,
        **tokenizers,
        **PIPELINE_OPTIONS[spec.pipeline],
    )
    pipeline.save_pretrained(out, safe_serialization=True)
    return digest(out)
