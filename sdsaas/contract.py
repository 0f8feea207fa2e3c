"""The contract between the control plane and the GPU workers: the only place its vocabulary is
spelled.

Django-free and typed: the control plane (jobs/) and the GPU workers (gpu_worker/) both import
it, and neither spells a task name, a queue name, a scheduler, an output format, a default or an
object key anywhere else. What crosses the queues:

- control plane -> GPU worker: the task `TASK_GPU_GENERATE` with one keyword argument `job`, a
  `JobMessage` as a dict (`to_wire`), self-contained: the worker has no database;
- GPU worker -> control plane: one task per event (`JobReceived` ... `JobPreempted`) on the
  control queue, whose keyword arguments are the event's fields.

Compatibility during a rolling deploy, when workers of two releases run side by side:
- every wire dict carries `v`, the `CONTRACT_VERSION` of its writer; a dict without it was written
  by the release before versioning (version 1), which had the same fields;
- a reader ignores fields it does not know, and a field added later has a default, so a reader
  of release N decodes what release N+1 writes, and the reverse;
- the control plane records the version of the worker that ran each delivery (the `received`
  event), so an operator sees which workers still run the previous release;
- renaming or removing a field is a breaking change: add the new field, keep reading the old one
  for one release, then drop it.
Deploy the control plane before the GPU workers: readers first, then writers.

`job_id` on the wire is always the job's public id (`job_...`); the database key never crosses.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Self

from PIL import Image, UnidentifiedImageError

CONTRACT_VERSION = 2

# --- Task names. Cross-boundary calls use them, never the functions. -------------------------

# Executed by GPU workers (gpu_worker/, no database).
TASK_GPU_GENERATE = "gpu.generate"

# Executed by the control worker (CPU, has the database).
TASK_SWEEP_UNPUBLISHED = "control.sweep_unpublished"
TASK_SWEEP_DEAD_LETTERS = "control.sweep_dead_letters"
# Admitted jobs whose queue message is gone: sent again (fenced by attempt) or failed.
TASK_RECONCILE_LOST = "control.reconcile_lost_jobs"
TASK_FETCH_INPUT_IMAGE = "control.fetch_input_image"
# Retention: rate-limit windows of past minutes, idempotency records past their TTL.
TASK_PRUNE_RECORDS = "control.prune_records"
# Webhooks: due messages to the webhooks queue (on the scheduler), and one attempt of one message
# (on the webhooks queue, consumed by its own workers: a slow receiver never delays job events).
TASK_WEBHOOKS_DISPATCH = "control.webhooks_dispatch"
TASK_WEBHOOK_DELIVER = "webhooks.deliver"
# Retention of the delivery log: settled messages (and their attempts) past WEBHOOK_LOG_DAYS.
TASK_WEBHOOKS_PRUNE = "control.webhooks_prune"


# --- Queue names. `prefix` is the deployment's (SDSAAS_SQS_QUEUE_PREFIX). ---------------------


def control_queue_name(prefix: str) -> str:
    """The control worker's queue (Celery's default queue)."""
    return f"{prefix}-control"


def model_queue_name(prefix: str, model_slug: str) -> str:
    """The queue of one base model's GPU pool."""
    return f"{prefix}-model-{model_slug}"


def webhooks_queue_name(prefix: str) -> str:
    """The webhook senders' queue."""
    return f"{prefix}-webhooks"


def dead_letter_queue_name(queue_name: str) -> str:
    return f"{queue_name}-dlq"


# --- Vocabulary, defaults and limits of a generation request. ---------------------------------


class Scheduler(StrEnum):
    """The API's scheduler names; the GPU worker maps each to a diffusers scheduler class."""

    DDIM = "ddim"
    DPMPP_2M = "dpmpp_2m"
    DPMPP_2M_KARRAS = "dpmpp_2m_karras"
    EULER = "euler"
    EULER_A = "euler_a"
    HEUN = "heun"
    LMS = "lms"
    PNDM = "pndm"
    UNIPC = "unipc"


class OutputFormat(StrEnum):
    PNG = "png"
    WEBP = "webp"
    JPEG = "jpeg"

    @property
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.JPEG else self.value


class JobKind(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"


DEFAULT_SCHEDULER = Scheduler.DPMPP_2M
DEFAULT_OUTPUT_FORMAT = OutputFormat.PNG
DEFAULT_STRENGTH = 0.8  # img2img: how far from the input image the result may go
SEED_MAX = 2**32 - 1
MAX_STEPS_CEILING = 150


# --- Object keys in the shared bucket. --------------------------------------------------------


def job_output_prefix(tenant_id: int, job_id: str) -> str:
    """Where a job's images go: `tenants/<tenant>/jobs/<job>/`."""
    return f"tenants/{tenant_id}/jobs/{job_id}/"


def output_key(output_prefix: str, index: int, output_format: OutputFormat) -> str:
    """The key of a job's image number `index`: `<prefix><n>.<ext>`."""
    return f"{output_prefix}{index}.{output_format.extension}"


def cancel_marker_key(output_prefix: str) -> str:
    """Written by the control plane when an admitted job is canceled; polled by its worker."""
    return f"{output_prefix}cancel"


def input_image_key(output_prefix: str, extension: str) -> str:
    """An img2img image fetched from its URL, stored next to the job's outputs."""
    return f"{output_prefix}input.{extension}"


def upload_key(tenant_id: int, upload_id: str, extension: str) -> str:
    """An uploaded input image: `tenants/<tenant>/uploads/<upload>.<ext>`."""
    return f"tenants/{tenant_id}/uploads/{upload_id}.{extension}"


# --- Input images: what an img2img job may be given, decoded the same way on both sides. -----

INPUT_IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}  # Pillow's name -> extension


class UnreadableImage(ValueError):
    """The bytes are no input image we take; `str(exc)` says why, in words for the API."""


def decode_input_image(data: bytes, *, max_pixels: int | None = None) -> tuple[Image.Image, str]:
    """Open and fully decode; the image and its extension. Refuses other formats, images over
    `max_pixels` and decompression bombs (Pillow's own limit when `max_pixels` is None)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in INPUT_IMAGE_FORMATS:
                raise UnreadableImage("must be a PNG, JPEG or WebP image")
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise UnreadableImage(
                    f"image of {image.width}x{image.height} exceeds {max_pixels} pixels"
                )
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, UnreadableImage):
            raise
        raise UnreadableImage(f"is not a readable image ({exc.__class__.__name__})") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UnreadableImage("image has too many pixels (decompression bomb)") from None
    return image, INPUT_IMAGE_FORMATS[str(image.format)]


# --- Encoding. ---------------------------------------------------------------------------------


def _known_fields(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `data` that `cls` has a field for: newer fields are dropped, not refused."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return {name: value for name, value in data.items() if name in names}


def _to_wire(value: Any) -> dict[str, Any]:
    return {"v": CONTRACT_VERSION, **dataclasses.asdict(value)}


def version_of(data: Mapping[str, Any]) -> int:
    """The contract version of a wire dict's writer (1: written before versioning)."""
    return int(data.get("v", 1))


# --- The job message: control plane -> GPU worker. ------------------------------------------


@dataclass(frozen=True)
class LoraChoice:
    slug: str
    weight: float


@dataclass(frozen=True)
class GenerationInput:
    """The resolved input of a job: defaults applied, the seed always set.

    The same dict is the job's `input` in the API and in the database.
    """

    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: Scheduler
    num_outputs: int
    seed: int
    negative_prompt: str = ""
    loras: tuple[LoraChoice, ...] = ()
    output_format: OutputFormat = DEFAULT_OUTPUT_FORMAT
    image: str | None = None  # img2img: the upload id or URL the job was given
    strength: float | None = None  # img2img only

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        known = _known_fields(cls, data)
        known["scheduler"] = Scheduler(known["scheduler"])
        known["output_format"] = OutputFormat(known.get("output_format", DEFAULT_OUTPUT_FORMAT))
        known["loras"] = tuple(
            LoraChoice(**_known_fields(LoraChoice, item)) for item in known.get("loras", ())
        )
        return cls(**known)

    def to_wire(self) -> dict[str, Any]:
        """The dict stored and shown as the job's input (img2img fields only when set)."""
        data = dataclasses.asdict(self)
        data["loras"] = list(data["loras"])
        return {name: value for name, value in data.items() if value is not None}


@dataclass(frozen=True)
class ModelRef:
    """Which weights to load; `sha256` is checked after download (empty: not checked)."""

    slug: str
    family: str
    source_uri: str
    revision: str
    sha256: str


@dataclass(frozen=True)
class LoraRef:
    slug: str
    weight: float
    source_uri: str
    sha256: str


@dataclass(frozen=True)
class JobMessage:
    """Everything a GPU worker needs for one job, and nothing secret."""

    job_id: str  # the public id
    attempt: int  # the dispatch attempt; each SQS redelivery of the same message adds one
    kind: JobKind
    input: GenerationInput
    model: ModelRef
    output_prefix: str
    created_at: str  # ISO 8601, the job's creation: the worker measures queue time from it
    loras: tuple[LoraRef, ...] = ()
    # Seconds from receive to upload, from the model's budget and the request; the worker holds
    # it to its own ceiling (None: only the ceiling).
    time_limit_s: float | None = None
    init_image_key: str = ""  # img2img: the input image's key in the bucket
    v: int = CONTRACT_VERSION

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        known = _known_fields(cls, data)
        known["v"] = version_of(data)
        known["kind"] = JobKind(known["kind"])
        known["input"] = GenerationInput.from_wire(known["input"])
        known["model"] = ModelRef(**_known_fields(ModelRef, known["model"]))
        known["loras"] = tuple(
            LoraRef(**_known_fields(LoraRef, item)) for item in known.get("loras", ())
        )
        known["init_image_key"] = known.get("init_image_key") or ""
        return cls(**known)

    def to_wire(self) -> dict[str, Any]:
        data = _to_wire(self)
        data["input"] = self.input.to_wire()
        data["loras"] = list(data["loras"])
        return data

    def as_attempt(self, attempt: int) -> JobMessage:
        return dataclasses.replace(self, attempt=attempt)


# --- Events: GPU worker -> control plane. -----------------------------------------------------


class EventKind(StrEnum):
    RECEIVED = "received"  # each delivery, before the model is loaded
    STARTED = "started"  # the model is loaded: the job is processing
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PREEMPTED = "preempted"  # the worker stopped before the job ended: it runs again


class FailureCode(StrEnum):
    """`error.code` of a failed job, as the API shows it."""

    INVALID_INPUT = "invalid_input"  # the request cannot be generated: retrying gives the same
    OUT_OF_MEMORY = "out_of_memory"
    TIMEOUT = "timeout"  # ran past its time limit
    INTERNAL_ERROR = "internal_error"  # the worker failed unexpectedly
    WORKER_LOST = "worker_lost"  # the worker died on each delivery (dead-lettered)
    MESSAGE_LOST = "message_lost"  # the queue message was lost, and republishing did not help
    IMAGE_FETCH_FAILED = "image_fetch_failed"  # img2img: the image URL could not be fetched


class RunOutcome(StrEnum):
    """How one run of a job on a GPU worker ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    PREEMPTED = "preempted"


@dataclass(frozen=True)
class Event:
    """An event of one attempt of one job; sent as the keyword arguments of its task."""

    KIND: ClassVar[EventKind]
    TASK: ClassVar[str]  # the control task that applies it

    job_id: str  # the public id
    attempt: int
    v: int = field(default=CONTRACT_VERSION, kw_only=True)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(**{**_known_fields(cls, data), "v": version_of(data)})

    def to_wire(self) -> dict[str, Any]:
        return _to_wire(self)


@dataclass(frozen=True)
class JobReceived(Event):
    KIND = EventKind.RECEIVED
    TASK = "control.job_received"


@dataclass(frozen=True)
class JobStarted(Event):
    KIND = EventKind.STARTED
    TASK = "control.job_started"
    load_s: float


@dataclass(frozen=True)
class JobProgress(Event):
    KIND = EventKind.PROGRESS
    TASK = "control.job_progress"
    step: int
    total: int


@dataclass(frozen=True)
class JobSucceeded(Event):
    KIND = EventKind.SUCCEEDED
    TASK = "control.job_succeeded"
    output_keys: list[str]
    # queue_s, load_s, inference_s, encode_s, upload_s: seconds, rounded to milliseconds
    metrics: dict[str, float]


@dataclass(frozen=True)
class JobFailed(Event):
    KIND = EventKind.FAILED
    TASK = "control.job_failed"
    code: FailureCode
    message: str

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        """A code this release does not know (from a newer worker) fails the job as an internal
        error, naming the code: clients only ever see the documented codes."""
        event = super().from_wire(data)
        if event.code in {code.value for code in FailureCode}:
            return dataclasses.replace(event, code=FailureCode(event.code))
        message = f"{event.code}: {event.message}"
        return dataclasses.replace(event, code=FailureCode.INTERNAL_ERROR, message=message)


@dataclass(frozen=True)
class JobPreempted(Event):
    KIND = EventKind.PREEMPTED
    TASK = "control.job_preempted"


EVENTS: tuple[type[Event], ...] = (
    JobReceived,
    JobStarted,
    JobProgress,
    JobSucceeded,
    JobFailed,
    JobPreempted,
)
