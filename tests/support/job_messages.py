"""Job messages as the control plane publishes them (sdsaas.contract), for the GPU worker tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sdsaas.contract import JobMessage


def message(tiny_model_dir: Path, job_id: str, **input_fields: Any) -> JobMessage:
    """A text-to-image job of the tiny model at `tiny_model_dir`, 64x64, 4 steps, seed 5."""
    return JobMessage.from_wire(message_dict(tiny_model_dir, job_id, **input_fields))


def message_dict(tiny_model_dir: Path, job_id: str, **input_fields: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "attempt": 1,
        "kind": "txt2img",
        "input": {
            "prompt": "a red fox",
            "negative_prompt": "",
            "width": 64,
            "height": 64,
            "steps": 4,
            "guidance": 7.5,
            "scheduler": "euler",
            "num_outputs": 1,
            "seed": 5,
            "loras": [],
            "output_format": "png",
            **input_fields,
        },
        "model": {
            "slug": "tiny",
            "family": "sd15",
            "source_uri": str(tiny_model_dir),
            "revision": "tiny-1",
            "sha256": "",
        },
        "loras": [],
        "init_image_key": "",
        "output_prefix": f"tenants/1/jobs/{job_id}/",
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
    }
