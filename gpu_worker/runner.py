"""One job on a GPU worker, as a script of named steps: load, generate, upload, report.

No database access: the job message (sdsaas.contract.JobMessage) is self-contained, and what the
worker learns goes back as events of the contract (gpu_worker.events).

A watchdog bounds the work from receive to report (time limit, stop grace, cancel): see
gpu_worker/watchdog.py. How a run ends early is an exception raised at a step boundary; `_ended`
turns each into the outcome and the event the control plane gets.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import diffusers
import torch
import transformers
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from PIL import Image

from gpu_worker import inference
from gpu_worker.events import send_event
from gpu_worker.loading import load_model, local_loras
from gpu_worker.retry import retry_through_outage
from gpu_worker.watchdog import STOP, JobWatchdog, Reason, canceled
from sdsaas.contract import (
    Event,
    FailureCode,
    JobFailed,
    JobMessage,
    JobPreempted,
    JobProgress,
    JobReceived,
    JobStarted,
    JobSucceeded,
    RunOutcome,
    UnreadableImage,
    cancel_marker_key,
    decode_input_image,
    output_key,
)

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0


class Preempted(Exception):
    """The worker is stopping and its grace period ran out: the job goes back to the queue."""


class TimedOut(Exception):
    """The job ran past its time limit: it fails as `timeout`."""


# How the runner ends a job the watchdog decided must end.
ENDED_BY: dict[Reason, type[Exception]] = {
    "timeout": TimedOut,
    "preempted": Preempted,
    "canceled": inference.Canceled,
}


def time_limit_s(message: JobMessage) -> float:
    """The job's own limit (set by the control plane), held to this worker's ceiling."""
    ceiling = float(settings.GPU_JOB_TIME_LIMIT_S)
    return ceiling if message.time_limit_s is None else min(message.time_limit_s, ceiling)


def timeout_message(limit_s: float) -> str:
    return f"The job ran past its time limit of {limit_s:g}s and was stopped."


@dataclass
class JobRun:
    """One attempt of one job on this worker, and what the steps measured."""

    message: JobMessage
    attempt: int
    storage: Storage
    send: Callable[[Event], None]
    device: torch.device = field(default_factory=inference.pick_device)
    timings: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, started: float) -> None:
        self.timings[name] = round(time.monotonic() - started, 3)


def run_job(
    message: JobMessage,
    *,
    attempt: int,
    storage: Storage,
    abandon: Callable[[Reason], None],
    send: Callable[[Event], None] = send_event,
    work_done: Callable[[], None] | None = None,
) -> RunOutcome:
    """Run one job message; return how it ended.

    `abandon` is what the watchdog does when the work does not stop in time; `work_done` is
    called when the images are stored and only the report of the job's success remains (the
    worker takes its next message ahead then).
    """
    run = JobRun(message=message, attempt=attempt, storage=storage, send=send)
    cancel_check = partial(canceled, storage, cancel_marker_key(message.output_prefix))
    if cancel_check():
        logger.info("job %s was canceled before it started", message.job_id)
        return RunOutcome.CANCELED
    # Before anything that may kill the worker (loading the model): every delivery is counted.
    send(JobReceived(message.job_id, attempt))
    created = dt.datetime.fromisoformat(message.created_at)
    queue_s = (dt.datetime.now(dt.UTC) - created).total_seconds()
    watchdog = JobWatchdog(
        time_limit_s=time_limit_s(message),
        stop_passed=STOP.passed,
        canceled=cancel_check,
        abandon=abandon,
    )
    try:
        with watchdog:
            model, loras = load(run)
            images = generate(run, model, loras, watchdog)
            keys = upload(run, encode(run, images))
    except Exception as exc:
        return _ended(run, exc)
    if work_done is not None:
        work_done()
    metrics = {"queue_s": round(queue_s, 3), **run.timings}
    send(JobSucceeded(message.job_id, attempt, output_keys=keys, metrics=metrics))
    return RunOutcome.SUCCEEDED


def load(run: JobRun) -> tuple[inference.LoadedModel, inference.LoraFiles]:
    """The model and LoRAs on this worker; reports the job as started."""
    if STOP.passed():  # delivered while the worker stops: not worth starting
        raise Preempted
    started = time.monotonic()
    model = load_model(run.message.model, run.device)
    loras = local_loras(run.message.loras)
    run.timed("load_s", started)
    run.send(JobStarted(run.message.job_id, run.attempt, load_s=run.timings["load_s"]))
    return model, loras


def generate(
    run: JobRun, model: inference.LoadedModel, loras: inference.LoraFiles, watchdog: JobWatchdog
) -> list[Image.Image]:
    """Denoise, reporting progress once a second; ends at a step when the watchdog says.

    The first report comes a second into the run: the `started` event just said it began.
    """
    message, last_progress = run.message, time.monotonic()

    def on_step(step: int, total: int) -> None:
        nonlocal last_progress
        # The watchdog decides; at a step boundary the job ends in-process.
        if watchdog.reason is not None:
            raise ENDED_BY[watchdog.reason]
        now = time.monotonic()
        if now - last_progress >= PROGRESS_INTERVAL_S:
            last_progress = now
            run.send(JobProgress(message.job_id, run.attempt, step=step, total=total))

    request = _request(run, loras)
    started = time.monotonic()
    images = inference.generate(model, request, on_step)
    run.timed("inference_s", started)
    return images


def _request(run: JobRun, loras: inference.LoraFiles) -> inference.Request:
    params = run.message.input
    return inference.Request(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        width=params.width,
        height=params.height,
        steps=params.steps,
        guidance=params.guidance,
        scheduler=params.scheduler,
        num_outputs=params.num_outputs,
        seed=params.seed,
        init_image=_init_image(run),
        loras=loras,
        **({} if params.strength is None else {"strength": params.strength}),
    )


def _init_image(run: JobRun) -> Image.Image | None:
    key = run.message.init_image_key
    if not key:
        return None

    def read() -> bytes:
        with run.storage.open(key, "rb") as handle:
            return bytes(handle.read())

    data = retry_through_outage("input image download", read)
    try:
        return decode_input_image(data)[0]
    except UnreadableImage as exc:
        raise inference.InvalidRequest(f"the input image {exc}") from exc


def encode(run: JobRun, images: list[Image.Image]) -> list[bytes]:
    """Each image in the job's format, with its reproducibility record."""
    started = time.monotonic()
    fmt = run.message.input.output_format
    encoded = [
        inference.encode_image(image, fmt, reproducibility_record(run, index))
        for index, image in enumerate(images)
    ]
    run.timed("encode_s", started)
    return encoded


def upload(run: JobRun, encoded: list[bytes]) -> list[str]:
    """Store the images under the job's prefix; their keys."""
    started = time.monotonic()
    fmt, prefix = run.message.input.output_format, run.message.output_prefix
    keys = [
        retry_through_outage(
            "image upload",
            partial(run.storage.save, output_key(prefix, index, fmt), ContentFile(data)),
        )
        for index, data in enumerate(encoded)
    ]
    run.timed("upload_s", started)
    return keys


def reproducibility_record(run: JobRun, index: int) -> dict[str, Any]:
    message = run.message
    return {
        "job_id": message.job_id,
        "image_index": index,
        "seed": message.input.seed + index,
        "input": message.input.to_wire(),
        "model": {
            "slug": message.model.slug,
            "revision": message.model.revision,
            "sha256": message.model.sha256,
        },
        "loras": [{"slug": lora.slug, "weight": lora.weight} for lora in message.loras],
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "device": str(run.device),
    }


def _ended(run: JobRun, exc: Exception) -> RunOutcome:
    """Report a run that ended early, by how it ended; re-raise what is no outcome of the job."""
    job_id, attempt = run.message.job_id, run.attempt
    if isinstance(exc, inference.Canceled):
        logger.info("job %s canceled during inference", job_id)
        return RunOutcome.CANCELED
    if isinstance(exc, Preempted):
        logger.info("job %s preempted: the worker is stopping", job_id)
        run.send(JobPreempted(job_id, attempt))
        return RunOutcome.PREEMPTED
    if isinstance(exc, TimedOut):
        limit_s = time_limit_s(run.message)
        logger.info("job %s ran past its time limit of %ss", job_id, limit_s)
        code, text = FailureCode.TIMEOUT, timeout_message(limit_s)
    elif isinstance(exc, inference.InvalidRequest):
        code, text = FailureCode.INVALID_INPUT, str(exc)
    elif inference.out_of_memory(exc):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        code = FailureCode.OUT_OF_MEMORY
        text = (
            f"The {run.device.type.upper()} ran out of memory: use a smaller size or fewer images."
        )
    else:
        raise exc
    run.send(JobFailed(job_id, attempt, code=code, message=text))
    return RunOutcome.FAILED
