"""What each architecture is built from: its components' configs, one `Arch` per `--arch`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

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
PIPELINE_OPTIONS: dict[type[Any], dict[str, Any]] = {
    StableDiffusionPipeline: {
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    },
    StableDiffusionXLPipeline: {"force_zeros_for_empty_prompt": True, "add_watermarker": False},
}
