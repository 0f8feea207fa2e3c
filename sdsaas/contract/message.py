"""The job message: control plane -> GPU worker."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from sdsaas.contract.vocabulary import DEFAULT_OUTPUT_FORMAT, JobKind, OutputFormat, Scheduler
from sdsaas.contract.wire import CONTRACT_VERSION, known_fields, version_of, wire_dict


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
        known = known_fields(cls, data)
        known["scheduler"] = Scheduler(known["scheduler"])
        known["output_format"] = OutputFormat(known.get("output_format", DEFAULT_OUTPUT_FORMAT))
        known["loras"] = tuple(
            LoraChoice(**known_fields(LoraChoice, item)) for item in known.get("loras", ())
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
    # The W3C traceparent of the job's trace (sdsaas/telemetry.py); empty: not traced. Not in the
    # body: it travels as the SQS message's `traceparent` attribute, and the worker puts it here.
    trace_parent: str = ""
    v: int = CONTRACT_VERSION

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        known = known_fields(cls, data)
        known["v"] = version_of(data)
        known["kind"] = JobKind(known["kind"])
        known["input"] = GenerationInput.from_wire(known["input"])
        known["model"] = ModelRef(**known_fields(ModelRef, known["model"]))
        known["loras"] = tuple(
            LoraRef(**known_fields(LoraRef, item)) for item in known.get("loras", ())
        )
        known["init_image_key"] = known.get("init_image_key") or ""
        return cls(**known)

    def to_wire(self) -> dict[str, Any]:
        data = wire_dict(self)
        data["input"] = self.input.to_wire()
        data["loras"] = list(data["loras"])
        del data["trace_parent"]
        return data

    def as_attempt(self, attempt: int) -> JobMessage:
        return dataclasses.replace(self, attempt=attempt)

    def traced(self, trace_parent: str) -> JobMessage:
        return dataclasses.replace(self, trace_parent=trace_parent)
