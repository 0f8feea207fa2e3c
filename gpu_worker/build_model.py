"""Write a Stable Diffusion pipeline in diffusers layout with random weights: built, not downloaded.

    python -m gpu_worker.build_model --arch tiny --out var/models/tiny
    python -m gpu_worker.build_model --arch sd15 --out /data/models/sd15-random --fp16

`tiny` is the test model (a few MB, 64x64 images in well under a second on a CPU); `sd15` has
the real SD 1.5 architecture (860M-parameter UNet), for load-time and GPU benchmarks. Each is
loaded by the same code path as real weights (`gpu_worker.inference.load_pipeline`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from gpu_worker.model_store import digest

_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
_CROSS = ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D")

ARCHS: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "projection_dim": 32,
        },
        "unet": {
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "sample_size": 8,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
        },
        "vae": {
            "block_out_channels": (32, 64),
            "sample_size": 64,
            "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2,
        },
    },
    "sd15": {
        "text": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "projection_dim": 768,
        },
        "unet": {
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "sample_size": 64,
            "down_block_types": (_CROSS[0],) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + (_CROSS[1],) * 3,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        },
        "vae": {
            "block_out_channels": (128, 256, 512, 512),
            "sample_size": 512,
            "layers_per_block": 2,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
        },
    },
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


def build(arch: str, out: Path, *, fp16: bool = False, seed: int = 0) -> str:
    """Write the pipeline to `out`; return its catalog hash (`gpu_worker.model_store.digest`)."""
    spec = ARCHS[arch]
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **spec["text"],
    )
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **spec["unet"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **spec["vae"])
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if fp16:
        pipeline.to(torch.float16)
    pipeline.save_pretrained(out, safe_serialization=True)
    return digest(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fp16", action="store_true", help="store half-precision weights")
    args = parser.parse_args()
    print(build(args.arch, args.out, fp16=args.fp16))


if __name__ == "__main__":
    main()
