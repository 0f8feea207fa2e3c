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

# The package follows the build: specs.py holds each architecture's configs (ARCHS), text.py the
# byte-level tokenizer and the CLIP text encoders, pipeline.py builds and saves a whole pipeline,
# lora.py a LoRA adapter file; __main__.py is the command line (its --help prints the docstring
# above). devstack.build_tiny_model rebuilds the dev stack's model when any of these files is
# newer than it.
from gpu_worker.build_model.lora import TEXT_LORA_TARGETS, UNET_LORA_TARGETS, build_lora
from gpu_worker.build_model.pipeline import build
from gpu_worker.build_model.specs import ARCHS, Arch
from gpu_worker.build_model.text import byte_level_tokenizer

__all__ = [
    "ARCHS",
    "TEXT_LORA_TARGETS",
    "UNET_LORA_TARGETS",
    "Arch",
    "build",
    "build_lora",
    "byte_level_tokenizer",
]
