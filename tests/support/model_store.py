"""Model-like folders for the model store's tests (tests/gpu_worker/test_model_*.py)."""

from __future__ import annotations

import os
from pathlib import Path

PART = 64 * 1024


def write_folder(root: Path) -> dict[str, bytes]:
    """A small model-like folder: nested files, one above the part size, one empty."""
    files = {
        "model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
        "unet/config.json": b"{}",
        "unet/diffusion_pytorch_model.safetensors": os.urandom(3 * PART + 123),
        "vae/empty.txt": b"",
    }
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def read_folder(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
