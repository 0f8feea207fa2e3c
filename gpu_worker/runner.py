"""One job on a GPU worker: load, generate, encode, upload, report. No database access.

Events go to the control queue as tasks (by name); the control worker applies them fenced by
attempt, so sending one twice, or late, changes nothing.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import diffusers
import torch
import transformers
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from kombu.exceptions import OperationalError
from PIL import Image, UnidentifiedImageError

from gpu_worker import inference, model_store
from gpu_worker.app import app as celery_app
from gpu_worker.watchdog import JobWatchdog, Reason
from sdsaas.broker.sqs import is_missing_queue
from sdsaas.queues import (
    TASK_JOB_FAILED,
    TASK_JOB_PREEMPTED,
    TASK_JOB_PROGRESS,
    TASK_JOB_RECEIVED,
    TASK_JOB_STARTED,
    TASK_JOB_SUCCEEDED,
    cancel_marker_key,
    control_queue_name,
)

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}


THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"}
T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """S3 or SQS trouble that a later try may not meet: unreachable, timeouts, 5xx, throttling,
    a missing queue."""
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        code = exc.response.get("Error", {}).get("Code")
        # A missing queue (deleted, recreated, a local server started anew) is the platform's
        # trouble, never the job's: it is created again.
        return status >= 500 or code in THROTTLING_CODES or is_missing_queue(exc)
    # Not every BotoCoreError: missing credentials or a bad parameter will not heal by waiting.
    return isinstance(
        exc,
        BotoConnectionError | HTTPClientError | OperationalError | ConnectionError | TimeoutError,
    )


def patiently(what: str, call: Callable[[], T]) -> T:
    """`call()`, retried through an S3 or SQS outage of up to GPU_OUTAGE_TOLERANCE_S seconds.

    A job in the middle of its work should not be thrown away (and run again after the visibility
    timeout) because the endpoint was away for a while: the work waits for it instead.
    """
    deadline = time.monotonic() + settings.GPU_OUTAGE_TOLERANCE_S
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            logger.warning("%s failed (%s); trying again in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def send_event(task_name: str, **kwargs: Any) -> None:
    """Report to the control worker. Progress is best effort (the next one supersedes a lost
    one); every other event waits out an outage, since the job's outcome depends on it."""

    def publish() -> None:
        celery_app.send_task(task_name, kwargs=kwargs, queue=control_queue_name())

    if task_name == TASK_JOB_PROGRESS:
        best_effort("progress event", publish, None)
    else:
        patiently(f"event {task_name}", publish)


def best_effort(what: str, call: Callable[[], T], default: T) -> T:
    """`call()`, or `default` when S3 or SQS is away (a later call will do its work)."""
    try:
        return call()
    except Exception as exc:
        if not is_transient(exc):
            raise
        logger.warning("%s failed: %s", what, exc)
        return default


def canceled(storage: Storage, key: str) -> bool:
    """Whether the control plane wrote the job's cancel marker."""
    # Storage away for a while: the job goes on, and is asked about again at the next check.
    return best_effort("cancel check", lambda: bool(storage.exists(key)), False)


class Preempted(Exception):
    """The worker is stopping and its grace period ran out: the job goes back to the queue."""


class TimedOut(Exception):
    """The job ran past its time limit: it fails as `timeout`."""


def time_limit_s(message: dict[str, Any]) -> float:
    """The job's own limit (set by the control plane), held to this worker's ceiling."""
    ceiling = float(settings.GPU_JOB_TIME_LIMIT_S)
    return min(float(message.get("time_limit_s", ceiling)), ceiling)


# How the runner ends a job the watchdog decided must end.
ENDED_BY: dict[Reason, type[Exception]] = {
    "timeout": TimedOut,
    "preempted": Preempted,
    "canceled": inference.Canceled,
}


def timeout_message(limit_s: float) -> str:
    return f"The job ran past its time limit of {limit_s:g}s and was stopped."


@dataclass
class StopDeadline:
    """Set when the worker is told to stop (SIGTERM): jobs still running past it are handed back."""

    at: float | None = None

    def begin(self, grace_s: float) -> None:
        if self.at is None:
            self.at = time.monotonic() + grace_s

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


STOP = StopDeadline()
MODEL_STORE = model_store.ModelStore(settings.GPU_MODEL_CACHE_DIR, model_store.s3_client_from_env)
CACHE = inference.PipelineCache(max_bytes=settings.GPU_PIPELINE_CACHE_BYTES)


def local_copy(source_uri: str, sha256: str) -> str:
    """A local path of a model or LoRA, downloaded and verified once if it lives in S3."""
    try:
        return str(MODEL_STORE.local_path(source_uri, sha256))
    except model_store.ModelStoreError as exc:  # missing or corrupt: retrying gives the same
        raise inference.InvalidRequest(str(exc)) from exc


def load_model(model_ref: dict[str, Any], device: torch.device) -> inference.LoadedModel:
    key = f"{model_ref['slug']}@{model_ref['revision']}"
    cached = CACHE.lookup(key)
    if cached is not None:
        return cached
    path = local_copy(model_ref["source_uri"], model_ref["sha256"])
    if not (Path(path) / "model_index.json").is_file():
        raise inference.InvalidRequest(f"no diffusers pipeline at {model_ref['source_uri']}")
    model, _ = CACHE.get(
        key,
        lambda: inference.load_pipeline(path, device),
        expected_bytes=inference.weights_bytes(path),
    )
    return model


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


def read_bytes(storage: Storage, message: dict[str, Any]) -> bytes:
    with storage.open(message["init_image_key"], "rb") as handle:
        return bytes(handle.read())


def decode_init_image(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise inference.InvalidRequest(f"the input image cannot be decoded ({exc})") from exc
    return image


def run_job(
    message: dict[str, Any],
    *,
    attempt: int,
    storage: Storage,
    abandon: Callable[[Reason], None],
    send: Callable[..., None] = send_event,
) -> str:
    """Run one job message; return how it ended: succeeded, failed, canceled or preempted.

    A watchdog bounds the work (time limit, stop grace, cancel): see gpu_worker/watchdog.py.
    `abandon` is what it does when the work does not stop in time.
    """
    job_id = message["job_id"]
    cancel_check = partial(canceled, storage, cancel_marker_key(message["output_prefix"]))
    if cancel_check():
        logger.info("job %s was canceled before it started", job_id)
        return "canceled"
    # Before anything that may kill the worker (loading the model): every delivery is counted.
    send(TASK_JOB_RECEIVED, job_id=job_id, attempt=attempt)
    created = dt.datetime.fromisoformat(message["created_at"])
    queue_s = (dt.datetime.now(dt.UTC) - created).total_seconds()
    device = inference.pick_device()
    limit_s = time_limit_s(message)
    watchdog = JobWatchdog(
        time_limit_s=limit_s, stop_passed=STOP.passed, canceled=cancel_check, abandon=abandon
    )
    try:
        with watchdog:
            outputs = _work(message, attempt, storage, device, watchdog, send)
    except inference.Canceled:
        logger.info("job %s canceled during inference", job_id)
        return "canceled"
    except Preempted:
        logger.info("job %s preempted: the worker is stopping", job_id)
        send(TASK_JOB_PREEMPTED, job_id=job_id, attempt=attempt)
        return "preempted"
    except TimedOut:
        logger.info("job %s ran past its time limit of %ss", job_id, limit_s)
        send(
            TASK_JOB_FAILED,
            job_id=job_id,
            attempt=attempt,
            code="timeout",
            message=timeout_message(limit_s),
        )
        return "failed"
    except inference.InvalidRequest as exc:
        send(
            TASK_JOB_FAILED, job_id=job_id, attempt=attempt, code="invalid_input", message=str(exc)
        )
        return "failed"
    except Exception as exc:
        if not inference.out_of_memory(exc):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        send(
            TASK_JOB_FAILED,
            job_id=job_id,
            attempt=attempt,
            code="out_of_memory",
            message=f"The {device.type.upper()} ran out of memory: "
            "use a smaller size or fewer images.",
        )
        return "failed"
    keys, metrics = outputs
    metrics = {"queue_s": round(queue_s, 3), **metrics}
    send(TASK_JOB_SUCCEEDED, job_id=job_id, attempt=attempt, output_keys=keys, metrics=metrics)
    return "succeeded"


def _work(
    message: dict[str, Any],
    attempt: int,
    storage: Storage,
    device: torch.device,
    watchdog: JobWatchdog,
    send: Callable[..., None],
) -> tuple[list[str], dict[str, float]]:
    """Load, generate, encode and upload; the output keys and the timings."""
    job_id = message["job_id"]
    prefix = message["output_prefix"]
    params = message["input"]
    if STOP.passed():  # delivered while the worker stops: not worth starting
        raise Preempted
    started = time.monotonic()
    model = load_model(message["model"], device)
    loras = tuple(
        (lora["slug"], local_copy(lora["source_uri"], lora["sha256"]), float(lora["weight"]))
        for lora in message["loras"]
    )
    load_s = time.monotonic() - started
    send(TASK_JOB_STARTED, job_id=job_id, attempt=attempt, load_s=round(load_s, 3))
    init_image = None
    if message.get("init_image_key"):
        init_image = decode_init_image(
            patiently("input image download", lambda: read_bytes(storage, message))
        )
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
        loras=loras,
    )
    last_progress = 0.0

    def on_step(step: int, total: int) -> None:
        nonlocal last_progress
        # The watchdog decides; at a step boundary the job ends in-process.
        if watchdog.reason is not None:
            raise ENDED_BY[watchdog.reason]
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
    keys = []
    for i, data in enumerate(encoded):
        key = f"{prefix}{i}.{EXTENSIONS[fmt]}"
        keys.append(patiently("image upload", partial(storage.save, key, ContentFile(data))))
    upload_s = time.monotonic() - upload_started
    metrics = {
        "load_s": round(load_s, 3),
        "inference_s": round(inference_s, 3),
        "encode_s": round(encode_s, 3),
        "upload_s": round(upload_s, 3),
    }
    return keys, metrics
