"""One job on a GPU worker: load, generate, encode, upload, report. No database access.

Events go to the control queue as tasks (by name); the control worker applies them fenced by
attempt, so sending one twice, or late, changes nothing.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from PIL import Image

from gpu_worker import inference
from sdsaas.celery import app as celery_app
from sdsaas.queues import (
    TASK_JOB_FAILED,
    TASK_JOB_PROGRESS,
    TASK_JOB_STARTED,
    TASK_JOB_SUCCEEDED,
    cancel_marker_key,
    control_queue_name,
)

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
CANCEL_POLL_S = 0.2
EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}


def send_event(task_name: str, **kwargs: Any) -> None:
    celery_app.send_task(task_name, kwargs=kwargs, queue=control_queue_name())


@dataclass
class CancelWatch:
    """Asks storage whether the job was canceled, at most every CANCEL_POLL_S seconds."""

    storage: Storage
    key: str
    checked_at: float = 0.0

    def canceled(self, *, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self.checked_at < CANCEL_POLL_S:
            return False
        self.checked_at = now
        return bool(self.storage.exists(self.key))


def resolve_model_path(source_uri: str) -> str:
    if source_uri.startswith("s3://"):
        raise NotImplementedError("s3:// model sources are not supported yet")
    path = Path(source_uri)
    if not (path / "model_index.json").is_file():
        raise inference.InvalidRequest(f"no diffusers pipeline at {source_uri}")
    return str(path)


CACHE = inference.PipelineCache(
    max_bytes=int(os.environ.get("SDSAAS_PIPELINE_CACHE_BYTES", 12 * 1024**3))
)


def reproducibility_record(
    message: dict[str, Any], index: int, device: torch.device
) -> dict[str, Any]:
    return {
        "job_id": message["job_id"],
        "image_index": index,
        "seed": message["input"]["seed"] + index,
        "input": message["input"],
        "model": {k: message["model"][k] for k in ("slug", "revision", "sha256")},
        "loras": [{"slug": lora["slug"], "weight": lora["weight"]} for lora in message["loras"]],
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "device": str(device),
    }


def run_job(
    message: dict[str, Any],
    *,
    attempt: int,
    storage: Storage,
    send: Callable[..., None] = send_event,
) -> str:
    """Run one job message; return how it ended: succeeded, failed or canceled."""
    job_id = message["job_id"]
    prefix = message["output_prefix"]
    watch = CancelWatch(storage, cancel_marker_key(prefix))
    if watch.canceled(force=True):
        logger.info("job %s was canceled before it started", job_id)
        return "canceled"
    created = dt.datetime.fromisoformat(message["created_at"])
    queue_s = (dt.datetime.now(dt.UTC) - created).total_seconds()
    device = inference.pick_device()
    params = message["input"]
    try:
        started = time.monotonic()
        model_ref = message["model"]
        path = resolve_model_path(model_ref["source_uri"])
        model, _ = CACHE.get(
            f"{model_ref['slug']}@{model_ref['revision']}",
            lambda: inference.load_pipeline(path, device),
        )
        load_s = time.monotonic() - started
        send(TASK_JOB_STARTED, job_id=job_id, attempt=attempt, load_s=round(load_s, 3))
        init_image = None
        if message.get("init_image_key"):
            with storage.open(message["init_image_key"], "rb") as handle:
                init_image = Image.open(io.BytesIO(handle.read()))
                init_image.load()
        request = inference.Request(
            prompt=params["prompt"],
            negative_prompt=params.get("negative_prompt", ""),
            width=params["width"],
            height=params["height"],
            steps=params["steps"],
            guidance=params["guidance"],
            scheduler=params["scheduler"],
            num_outputs=params["num_outputs"],
            seed=params["seed"],
            init_image=init_image,
            strength=params.get("strength", 0.8),
        )
        last_progress = 0.0

        def on_step(step: int, total: int) -> None:
            nonlocal last_progress
            if watch.canceled():
                raise inference.Canceled
            now = time.monotonic()
            if now - last_progress >= PROGRESS_INTERVAL_S:
                last_progress = now
                send(TASK_JOB_PROGRESS, job_id=job_id, attempt=attempt, step=step, total=total)

        inference_started = time.monotonic()
        images = inference.generate(model, request, on_step)
        inference_s = time.monotonic() - inference_started
        encode_started = time.monotonic()
        fmt = params.get("output_format", "png")
        encoded = [
            inference.encode_image(image, fmt, reproducibility_record(message, i, device))
            for i, image in enumerate(images)
        ]
        encode_s = time.monotonic() - encode_started
        upload_started = time.monotonic()
        keys = [
            storage.save(f"{prefix}{i}.{EXTENSIONS[fmt]}", ContentFile(data))
            for i, data in enumerate(encoded)
        ]
        upload_s = time.monotonic() - upload_started
    except inference.Canceled:
        logger.info("job %s canceled during inference", job_id)
        return "canceled"
    except inference.InvalidRequest as exc:
        send(
            TASK_JOB_FAILED, job_id=job_id, attempt=attempt, code="invalid_input", message=str(exc)
        )
        return "failed"
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        send(
            TASK_JOB_FAILED,
            job_id=job_id,
            attempt=attempt,
            code="out_of_memory",
            message="The GPU ran out of memory: use a smaller size or fewer images.",
        )
        return "failed"
    metrics = {
        "queue_s": round(queue_s, 3),
        "load_s": round(load_s, 3),
        "inference_s": round(inference_s, 3),
        "encode_s": round(encode_s, 3),
        "upload_s": round(upload_s, 3),
    }
    send(TASK_JOB_SUCCEEDED, job_id=job_id, attempt=attempt, output_keys=keys, metrics=metrics)
    return "succeeded"
