"""One job on a GPU worker, as a script of named steps: load, generate, upload, report.

No database access: the job message (sdsaas.contract.JobMessage) is self-contained, and what the
worker learns goes back as events of the contract (gpu_worker.events).

A watchdog bounds the work from receive to report (time limit, stop grace, cancel): see
gpu_worker/watchdog.py. How a run ends early is an exception raised at a step boundary; `_ended`
turns each into the outcome and the event the control plane gets.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import diffusers
import torch
import transformers
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from PIL import Image

from gpu_worker import inference
from gpu_worker.batch_budget import BUDGET
from gpu_worker.events import Send, send_events
from gpu_worker.loading import load_model, local_loras
from gpu_worker.retry import retry_through_outage
from gpu_worker.watchdog import STOP, JobWatchdog, Reason, canceled
from sdsaas import telemetry
from sdsaas.contract import (
    FailureCode,
    JobFailed,
    JobKind,
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
T = TypeVar("T")
R = TypeVar("R")


class Preempted(Exception):
    """The worker is stopping and its grace period ran out: the job goes back to the queue."""


class TimedOut(Exception):
    """The job ran past its time limit: it fails as `timeout`."""


class PartlyRun(Exception):
    """A batch raised what is no outcome of a job (`error`: S3 away, a bug) after some of its
    jobs had ended: how those ended (`outcomes`, by index), which their messages must follow."""

    def __init__(self, error: Exception, outcomes: dict[int, RunOutcome]) -> None:
        super().__init__(f"{error.__class__.__name__} after {len(outcomes)} job(s) ended")
        self.error = error
        self.outcomes = outcomes


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
    send: Send
    device: torch.device = field(default_factory=inference.pick_device)
    timings: dict[str, float] = field(default_factory=dict)

    def queued(self, received: dt.datetime) -> None:
        """Keep the job's wait in its queue (its creation to its receive) for its metrics, and
        record it in the job's trace: once, however many times its batch runs it."""
        seconds = (received - dt.datetime.fromisoformat(self.message.created_at)).total_seconds()
        self._kept("queue_s", seconds, span="job.queue_wait")

    def timed(self, name: str, started: float) -> None:
        """Keep a step's seconds for the job's metrics, and record it in the job's trace."""
        self._kept(name, time.monotonic() - started, span=f"job.{name}")

    def _kept(self, name: str, seconds: float, *, span: str) -> None:
        self.timings[name] = round(seconds, 3)
        telemetry.record(
            span,
            parent=self.message.trace_parent,
            started_s_ago=seconds,
            job_id=self.message.job_id,
            attempt=self.attempt,
        )


def batch_key(message: JobMessage) -> tuple[Any, ...] | None:
    """What jobs must share to run as one micro-batch (`inference.batch_key`, on the messages):
    the model, text to image, size, steps, guidance, scheduler and LoRAs. None: never batched."""
    params = message.input
    if message.kind != JobKind.TXT2IMG or message.init_image_key:
        return None
    return (
        message.model,
        params.width,
        params.height,
        params.steps,
        params.guidance,
        params.scheduler,
        message.loras,
    )


# What the watchdog does with a batch that will not stop (gpu_worker/tasks.py `abandon_jobs`):
# given why, the indexes of the jobs being run, and how each job that ended already ended.
Abandon = Callable[[Reason, list[int], dict[int, RunOutcome]], None]


def run_job(
    message: JobMessage,
    *,
    attempt: int,
    storage: Storage,
    abandon: Callable[[Reason], None],
    send: Send = send_events,
    work_done: Callable[[], None] | None = None,
) -> RunOutcome:
    """Run one job message; return how it ended (`run_jobs` of one)."""
    [outcome] = run_jobs(
        [(message, attempt)],
        storage=storage,
        abandon=lambda reason, running, finished: abandon(reason),
        send=send,
        work_done=work_done,
    )
    return outcome


def run_jobs(
    members: list[tuple[JobMessage, int]],
    *,
    storage: Storage,
    abandon: Abandon,
    send: Send = send_events,
    work_done: Callable[[], None] | None = None,
) -> list[RunOutcome]:
    """Run job messages (each with its attempt) as one batch; how each ended, in order.

    More than one: text-to-image jobs of one `batch_key`, micro-batched by the worker
    (gpu_worker/tasks.py). Each job is reported as if it ran alone: its own events, images and
    metrics (load and inference are the batch's; `batch_size` says how many jobs shared them).
    The batch is watched as one: its time limit
    is the sum of the jobs' (held to the worker's ceiling), it ends as canceled only once every
    job was canceled (a job canceled alone is reported at its end, and the control plane, for
    which it is final, drops the report), and it is preempted as a whole. A batch that fails for
    what one job could cause (invalid input, out of memory) runs its jobs again one by one, so
    that each succeeds or fails on its own. What is no outcome of a job (S3 away past its
    patience, a bug) is raised: as `PartlyRun`, with how the others ended, once any job ended.

    `abandon` is what the watchdog does when the work does not stop in time (see `Abandon`);
    `work_done` is called when the images are stored and only the report of the jobs' success
    remains (the worker takes its next message ahead then).
    """
    received = dt.datetime.now(dt.UTC)
    runs = [JobRun(message=m, attempt=a, storage=storage, send=send) for m, a in members]
    outcomes: dict[int, RunOutcome] = {}
    live: list[int] = []
    canceled_now = each_at_once(lambda run: cancel_check(run)(), runs)
    for index, run in enumerate(runs):
        if canceled_now[index]:
            logger.info("job %s was canceled before it started", run.message.job_id)
            outcomes[index] = RunOutcome.CANCELED
        else:
            run.queued(received)
            live.append(index)
    # Before anything that may kill the worker (loading the model), on the events thread: a cold
    # load takes seconds, a warm one none, and then the jobs are not at risk.
    send([JobReceived(runs[index].message.job_id, runs[index].attempt) for index in live])
    try:
        if live and not _run_live(runs, live, outcomes, abandon, work_done):
            logger.info(
                "batch of %d failed for one job's reason: its jobs run one by one", len(live)
            )
            for index in live:
                _run_live(runs, [index], outcomes, abandon, None)
            if work_done is not None:
                work_done()
    except Exception as exc:
        if outcomes:
            raise PartlyRun(exc, dict(outcomes)) from exc
        raise
    return [outcomes[index] for index in range(len(runs))]


def each_at_once(call: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`call` of each item, in order; a batch's at once, in threads: its jobs' round trips to S3
    (cancel checks, uploads) overlap instead of adding up. Each call sees the caller's context
    (the log's ids, the trace). The first error is raised, once every call ended."""
    if len(items) < 2:
        return [call(item) for item in items]
    threads = batch_threads()
    futures = [threads.submit(contextvars.copy_context().run, call, item) for item in items]
    wait(futures)
    return [future.result() for future in futures]


@functools.cache
def batch_threads() -> ThreadPoolExecutor:
    """The process's threads for `each_at_once`, kept for its life: the storage makes an S3 client
    for each thread that reads (`exists`, the cancel checks), which costs far more than the call.
    The uploads share the storage's one bucket and its client, whose pool keeps 10 connections:
    beyond 10 jobs a batch's uploads wait for one."""
    threads = max(2, settings.GPU_MAX_BATCH)
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="batch")


def cancel_check(run: JobRun) -> Callable[[], bool]:
    return partial(canceled, run.storage, cancel_marker_key(run.message.output_prefix))


def _run_live(
    runs: list[JobRun],
    indexes: list[int],
    outcomes: dict[int, RunOutcome],
    abandon: Abandon,
    work_done: Callable[[], None] | None,
) -> bool:
    """Run `runs[i]` for each of `indexes` as one batch, filling in `outcomes`; False, with no
    outcome filled in, when a batch of several failed for what one job could cause."""
    batch = [runs[index] for index in indexes]
    key = batch_key(batch[0].message)
    checks = [cancel_check(run) for run in batch]
    watchdog = JobWatchdog(
        time_limit_s=min(
            float(settings.GPU_JOB_TIME_LIMIT_S), sum(time_limit_s(run.message) for run in batch)
        ),
        stop_passed=STOP.passed,
        canceled=lambda: all(check() for check in checks),
        abandon=lambda reason: abandon(reason, list(indexes), dict(outcomes)),
    )
    try:
        with watchdog:
            model, loras = load(batch)
            try:
                images = generate(batch, model, loras, watchdog)
            except Exception as exc:
                if len(batch) > 1 and key is not None and inference.out_of_memory(exc):
                    BUDGET.out_of_memory(key, sum(run.message.input.num_outputs for run in batch))
                raise
            if key is not None:
                BUDGET.ran(key, sum(map(len, images)), batch[0].timings["inference_s"])
            encoded = [encode(run, mine) for run, mine in zip(batch, images, strict=True)]
            keys = each_at_once(lambda pair: upload(*pair), list(zip(batch, encoded, strict=True)))
    except Exception as exc:
        if len(batch) > 1 and _one_jobs_fault(exc):
            return False
        outcomes.update({index: _ended(runs[index], exc) for index in indexes})
        return True
    if work_done is not None:
        work_done()
    succeeded = []
    for index, run, stored in zip(indexes, batch, keys, strict=True):
        metrics = {**run.timings, "batch_size": float(len(batch))}
        succeeded.append(
            JobSucceeded(run.message.job_id, run.attempt, output_keys=stored, metrics=metrics)
        )
        outcomes[index] = RunOutcome.SUCCEEDED
    batch[0].send(succeeded)  # together: a batch's outcomes in one call to SQS
    return True


def _one_jobs_fault(exc: Exception) -> bool:
    return isinstance(exc, inference.InvalidRequest) or inference.out_of_memory(exc)


def load(runs: list[JobRun]) -> tuple[inference.LoadedModel, inference.LoraFiles]:
    """The model and LoRAs on this worker (the jobs share them); reports each job as started."""
    if STOP.passed():  # delivered while the worker stops: not worth starting
        raise Preempted
    first = runs[0]
    started = time.monotonic()
    model = load_model(first.message.model, first.device)
    loras = local_loras(first.message.loras)
    for run in runs:
        run.timed("load_s", started)
    first.send([JobStarted(r.message.job_id, r.attempt, load_s=r.timings["load_s"]) for r in runs])
    return model, loras


def generate(
    runs: list[JobRun],
    model: inference.LoadedModel,
    loras: inference.LoraFiles,
    watchdog: JobWatchdog,
) -> list[list[Image.Image]]:
    """Denoise, reporting each job's progress once a second; ends at a step when the watchdog
    says. The first report comes a second into the run: the `started` event just said it began.
    """
    last_progress = time.monotonic()

    def on_step(step: int, total: int) -> None:
        nonlocal last_progress
        # The watchdog decides; at a step boundary the jobs end in-process.
        if watchdog.reason is not None:
            raise ENDED_BY[watchdog.reason]
        now = time.monotonic()
        if now - last_progress >= PROGRESS_INTERVAL_S:
            last_progress = now
            runs[0].send([JobProgress(r.message.job_id, r.attempt, step, total) for r in runs])

    requests = [_request(run, loras) for run in runs]
    started = time.monotonic()
    if len(runs) == 1:
        images = [inference.generate(model, requests[0], on_step)]
    else:
        images = inference.generate_batch(model, requests, on_step)
    for run in runs:
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

    try:
        data = retry_through_outage("input image download", read)
    except FileNotFoundError as exc:  # expired from the bucket since it was named (its lifecycle)
        raise inference.InvalidRequest(
            "the input image is no longer stored: upload it again"
        ) from exc
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
        run.send([JobPreempted(job_id, attempt)])
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
    run.send([JobFailed(job_id, attempt, code=code, message=text)])
    return RunOutcome.FAILED
