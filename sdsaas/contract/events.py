"""Events: GPU worker -> control plane, as tasks on the control queue: one event as its own task
(`Event.TASK`, its fields the keyword arguments), several sent together as one `TASK_JOB_EVENTS`
task (`events_to_wire`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Self

from sdsaas.contract.wire import CONTRACT_VERSION, known_fields, version_of, wire_dict


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
    # dead-lettered: the worker died on each delivery (or no delivery ran it to an end, republished
    # up to RECONCILE_MAX_REPUBLISHES times)
    WORKER_LOST = "worker_lost"
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
        return cls(**{**known_fields(cls, data), "v": version_of(data)})

    def to_wire(self) -> dict[str, Any]:
        return wire_dict(self)


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
    # queue_s, load_s, inference_s, encode_s, upload_s: seconds, rounded to milliseconds;
    # batch_size: how many jobs ran as one batch with it (their load and inference are shared)
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


BY_KIND: dict[str, type[Event]] = {event.KIND.value: event for event in EVENTS}


def events_to_wire(events: Sequence[Event]) -> list[dict[str, Any]]:
    """Events as the `events` argument of `TASK_JOB_EVENTS`: each one's wire dict and its kind."""
    return [{"kind": event.KIND.value, **event.to_wire()} for event in events]


def event_from_wire(data: Mapping[str, Any]) -> Event | None:
    """One entry of `events_to_wire`; None for a kind this release does not know (a newer
    worker's), which the reader skips as it skips a field it does not know."""
    kind = BY_KIND.get(str(data.get("kind")))
    return None if kind is None else kind.from_wire(data)
