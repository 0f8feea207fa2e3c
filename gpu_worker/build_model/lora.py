"""A LoRA adapter for an architecture: one .safetensors file, the same bytes for the same seed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict
from transformers import CLIPTextModel

from gpu_worker.build_model.specs import ARCHS
from gpu_worker.build_model.text import text_encoders
from gpu_worker.model_store import digest

# The projections SD 1.x and SDXL LoRAs train (kohya's and diffusers' scripts alike): UNet
# attention and the CLIP text encoders' self-attention.
UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _random_lora_layers(
    model: UNet2DConditionModel | CLIPTextModel, config: LoraConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """The adapter's keys as PEFT names them, each filled from `generator` in key order.

    `lora_A ~ N(0, 1/in)` and `lora_B ~ N(0, 1/r)` make `B @ A` about as large as the base
    weights of a randomly initialised layer: a visible change, far from overflow.
    """
    model.add_adapter(config)
    shapes = {key: value.shape for key, value in get_peft_model_state_dict(model).items()}
    layers = {}
    for key in sorted(shapes):
        rows, cols = shapes[key]
        # An explicit device: the caller's `torch.device("meta")` context would apply here too.
        values = torch.randn(rows, cols, generator=generator, dtype=torch.float32, device="cpu")
        layers[key] = (values / cols**0.5).contiguous()
    return layers


def _lora_metadata(rank: int, targets: tuple[str, ...]) -> dict[str, Any]:
    """What diffusers reads back into a `LoraConfig`; only what a loader needs, and no set:
    `LoraConfig.to_dict()` holds `target_modules` as a set (its order changes per process, so
    would the file's bytes) and the PEFT version (so would the digest, on every upgrade)."""
    return {"r": rank, "lora_alpha": rank, "target_modules": sorted(targets)}


def build_lora(
    arch: str, out: Path, *, seed: int = 0, rank: int = 4, text_encoder: bool = True
) -> str:
    """Write a LoRA for `arch` to the file `out`; return its catalog hash (sha256 of the file).

    With `text_encoder`, every text encoder of the architecture gets its part (SDXL: both).
    """
    spec = ARCHS[arch]
    generator = torch.Generator().manual_seed(seed)
    unet_metadata = _lora_metadata(rank, UNET_LORA_TARGETS)
    text_metadata = _lora_metadata(rank, TEXT_LORA_TARGETS)
    text_parts: dict[str, Any] = {}
    # Only the module names and shapes are needed: on the meta device even the full-size
    # UNets cost no memory and no time.
    with torch.device("meta"):
        unet = UNet2DConditionModel(**spec.unet_config())
        unet_layers = _random_lora_layers(unet, LoraConfig(**unet_metadata), generator)
        if text_encoder:
            for name, clip in text_encoders(spec).items():
                layers = _random_lora_layers(clip, LoraConfig(**text_metadata), generator)
                text_parts[f"{name}_lora_layers"] = layers
                text_parts[f"{name}_lora_adapter_metadata"] = text_metadata
    out.parent.mkdir(parents=True, exist_ok=True)
    spec.pipeline.save_lora_weights(
        out.parent,
        unet_lora_layers=unet_layers,
        weight_name=out.name,
        unet_lora_adapter_metadata=unet_metadata,
        **text_parts,
    )
    _sort_header(out)
    return digest(out)


def _sort_header(path: Path) -> None:
    """Rewrite a .safetensors header with its keys sorted. safetensors writes the file's
    metadata from a hash map, whose order changes from one call to the next (diffusers gives
    it two keys), so the same LoRA would get other bytes, and another catalog hash, each time.
    The tensors' data offsets are relative to the end of the header: the data stays as it is."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])
