"""Write a Stable Diffusion pipeline in diffusers layout with random weights: built, not downloaded.

    python -m gpu_worker.build_model --arch tiny --out var/models/tiny
    python -m gpu_worker.build_model --arch tiny-xl --out var/models/tiny-xl
    python -m gpu_worker.build_model --arch sd15 --out /data/models/sd15-random --fp16
    python -m gpu_worker.build_model --arch sdxl --out /data/models/sdxl-random --fp16
    python -m gpu_worker.build_model --arch tiny --lora var/loras/tiny-style.safetensors

`tiny` and `tiny-xl` are the test models (a few MB; with 4 steps on two CPU cores, `tiny`
renders 64x64 in about 0.1 s and 512x512 in under a second, `tiny-xl` 512x512 in about 2 s):
`tiny` has SD 1.5's structure (`StableDiffusionPipeline`, one CLIP text encoder), `tiny-xl`
SDXL's (`StableDiffusionXLPipeline`, two text encoders, the second with a projection whose
pooled output and the image's size condition the UNet through "text_time" embeddings).
`sd15` and `sdxl` have the real architectures (860M- and 2.6B-parameter UNets), for load-time
and GPU benchmarks. `sdxl --fp16` takes about 7 GB of memory and a minute on two cores to
build (its weights are drawn in half precision directly, never held in fp32); without `--fp16`,
twice the memory. Each is loaded by the same code path as real weights
(`gpu_worker.inference.load_pipeline`).

`--lora FILE` writes instead a LoRA adapter for that architecture: one `.safetensors` file in
the diffusers/PEFT layout that diffusers' training scripts save (`unet.<module>.lora_A.weight`,
`lora_B.weight`, and `text_encoder.` keys, and `text_encoder_2.` for SDXL, with the PEFT config
in the file's metadata), as `pipeline.load_lora_weights(FILE, adapter_name=...)` loads it. Its
weights are random but not zero (a freshly trained LoRA starts with `lora_B = 0`, which would
change no pixel), and the same seed writes the same bytes. Each command prints the catalog
hash of what it wrote.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from peft import LoraConfig, get_peft_model_state_dict
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from gpu_worker.model_store import digest

# The noise schedule SD 1.x and SDXL were trained with. The DDIM/PNDM keys stay in SDXL's
# Euler config too, as in Stability's release: a worker that switches schedulers builds the
# new one from this config, and DDIM's defaults (`clip_sample=True`) would spoil the images.
_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
_XL_SCHEDULER = {
    **_SCHEDULER,
    "skip_prk_steps": True,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
}
_CROSS = ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D")

_TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 32,
}
# Another width than the first encoder's, so a mix-up of the two cannot pass unnoticed.
_TINY_TEXT_2 = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 48,
    "hidden_act": "gelu",
}
# OpenAI CLIP ViT-L/14: SD 1.5's text encoder and SDXL's first.
_CLIP_L = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
}
# OpenCLIP ViT-bigG/14: SDXL's second text encoder.
_CLIP_BIG_G = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
# The test models' VAE: four blocks as in SD's, so latents are an eighth of the image per side
# as the pipelines expect, but slim (few channels, one layer per block). A CPU render of a large
# image spends its time where there are many pixels: in the decoder's full-resolution blocks.
_TINY_VAE = {
    "block_out_channels": (8, 16, 32, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
_SD_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "sample_size": 512,
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
_XL_VAE = {"scaling_factor": 0.13025, "force_upcast": True}


@dataclass(frozen=True)
class Arch:
    """What each component of one architecture is built from.

    The UNet's sizes that follow from the text encoders (its cross-attention width, SDXL's
    "text_time" input) are computed from them in `unet_config`, never written twice.
    """

    pipeline: type[StableDiffusionPipeline] | type[StableDiffusionXLPipeline]
    text: tuple[dict[str, Any], ...]  # one CLIP config per text encoder, in pipeline order
    unet: dict[str, Any]
    vae: dict[str, Any]
    scheduler: tuple[type[DDIMScheduler] | type[EulerDiscreteScheduler], dict[str, Any]]

    @property
    def text_names(self) -> tuple[str, ...]:
        """The pipeline's text encoder components: `text_encoder`, `text_encoder_2`, ..."""
        return tuple("text_encoder" + (f"_{i + 1}" if i else "") for i in range(len(self.text)))

    def text_encoder_class(self, index: int) -> type[CLIPTextModel]:
        # SDXL's last encoder carries a projection head: its pooled, projected output is one of
        # the UNet's inputs besides the hidden states.
        if self.pipeline is StableDiffusionXLPipeline and index == len(self.text) - 1:
            return CLIPTextModelWithProjection
        return CLIPTextModel

    def unet_config(self) -> dict[str, Any]:
        # The UNet attends to the text encoders' hidden states side by side.
        config = {
            "in_channels": 4,
            "out_channels": 4,
            "cross_attention_dim": sum(text["hidden_size"] for text in self.text),
            **self.unet,
        }
        if "addition_time_embed_dim" in self.unet:
            # SDXL conditions on six numbers (original height and width, crop top and left,
            # target height and width), each embedded in `addition_time_embed_dim`, and on the
            # last encoder's pooled projection.
            config["addition_embed_type"] = "text_time"
            config["projection_class_embeddings_input_dim"] = (
                6 * self.unet["addition_time_embed_dim"] + self.text[-1]["projection_dim"]
            )
        return config


ARCHS: dict[str, Arch] = {
    "tiny": Arch(
        pipeline=StableDiffusionPipeline,
        text=(_TINY_TEXT,),
        # Few channels where the latents are largest, and attention (whose cost grows with the
        # square of the latent's pixels) only at the smallest resolution: a 512x512 image
        # has 64x64 latents, attended to at 16x16.
        unet={
            "block_out_channels": (16, 32, 64),
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "sample_size": 8,
            "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            "attention_head_dim": 8,
        },
        vae=_TINY_VAE,
        scheduler=(DDIMScheduler, _SCHEDULER),
    ),
    "tiny-xl": Arch(
        pipeline=StableDiffusionXLPipeline,
        text=(_TINY_TEXT, _TINY_TEXT_2),
        # SDXL's traits in small: no attention at the highest resolution, several
        # transformer layers per block, linear projections, "text_time" conditioning.
        unet={
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "sample_size": 8,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": 8,
            "transformer_layers_per_block": (1, 2),
            "use_linear_projection": True,
            "addition_time_embed_dim": 8,
        },
        vae={**_TINY_VAE, **_XL_VAE},
        scheduler=(EulerDiscreteScheduler, _XL_SCHEDULER),
    ),
    "sd15": Arch(
        pipeline=StableDiffusionPipeline,
        text=(_CLIP_L,),
        unet={
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "sample_size": 64,
            "down_block_types": (_CROSS[0],) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + (_CROSS[1],) * 3,
            "attention_head_dim": 8,
        },
        vae=_SD_VAE,
        scheduler=(DDIMScheduler, _SCHEDULER),
    ),
    # stabilityai/stable-diffusion-xl-base-1.0's configs.
    "sdxl": Arch(
        pipeline=StableDiffusionXLPipeline,
        text=(_CLIP_L, _CLIP_BIG_G),
        unet={
            "block_out_channels": (320, 640, 1280),
            "layers_per_block": 2,
            "sample_size": 128,
            "down_block_types": ("DownBlock2D",) + (_CROSS[0],) * 2,
            "up_block_types": (_CROSS[1],) * 2 + ("UpBlock2D",),
            "attention_head_dim": (5, 10, 20),
            "transformer_layers_per_block": (1, 2, 10),
            "use_linear_projection": True,
            "addition_time_embed_dim": 256,
        },
        vae={**_SD_VAE, "sample_size": 1024, **_XL_VAE},
        scheduler=(EulerDiscreteScheduler, _XL_SCHEDULER),
    ),
}

# What each pipeline class is saved with besides its components. Safety checking, if any, is
# the service's business, not the test model's; the invisible watermark would make the pixels
# depend on whether an optional package happens to be installed.
_PIPELINE_OPTIONS: dict[type[Any], dict[str, Any]] = {
    StableDiffusionPipeline: {
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    },
    StableDiffusionXLPipeline: {"force_zeros_for_empty_prompt": True, "add_watermarker": False},
}


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-level alphabet (the GPT-2 mapping), so any text tokenizes without merges."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def byte_level_tokenizer() -> CLIPTokenizer:
    alphabet = list(_bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate([*alphabet, *(c + "</w>" for c in alphabet)])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_config(text: dict[str, Any], tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **text,
    )


def _text_encoders(spec: Arch) -> dict[str, CLIPTextModel]:
    """The text encoders by component name, each built for the byte-level tokenizer."""
    tokenizer = byte_level_tokenizer()
    return {
        name: spec.text_encoder_class(i)(_text_config(text, tokenizer))
        for i, (name, text) in enumerate(zip(spec.text_names, spec.text, strict=True))
    }


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
        text_encoders = _text_encoders(spec)
    scheduler_class, scheduler_config = spec.scheduler
    tokenizers = {
        name.replace("text_encoder", "tokenizer"): byte_level_tokenizer()
        for name in spec.text_names
    }
    pipeline = spec.pipeline(
        vae=vae,
        unet=unet,
        scheduler=scheduler_class.from_config(scheduler_config),
        **text_encoders,
        **tokenizers,
        **_PIPELINE_OPTIONS[spec.pipeline],
    )
    pipeline.save_pretrained(out, safe_serialization=True)
    return digest(out)


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
            for name, clip in _text_encoders(spec).items():
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="folder for the pipeline")
    target.add_argument("--lora", type=Path, help="a .safetensors file for a LoRA adapter")
    parser.add_argument("--fp16", action="store_true", help="store half-precision weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.lora is not None:
        if args.lora.suffix != ".safetensors":
            parser.error("--lora must name a .safetensors file")
        print(build_lora(args.arch, args.lora, seed=args.seed))
    else:
        print(build(args.arch, args.out, fp16=args.fp16, seed=args.seed))


if __name__ == "__main__":
    main()
