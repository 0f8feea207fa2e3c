"""The contract between the control plane and the GPU workers: the only place its vocabulary is
spelled.

Django-free and typed: the control plane (jobs/) and the GPU workers (gpu_worker/) both import
it, and neither spells a task name, a queue name, a scheduler, an output format, a default or an
object key anywhere else. What crosses the queues:

- control plane -> GPU worker: the task `TASK_GPU_GENERATE` with one keyword argument `job`, a
  `JobMessage` as a dict (`to_wire`), self-contained: the worker has no database;
- GPU worker -> control plane: one task per event (`JobReceived` ... `JobPreempted`) on the
  control queue, whose keyword arguments are the event's fields; or, for events sent together,
  one `TASK_JOB_EVENTS` task whose `events` argument lists them (`events_to_wire`).

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

One module a part: names.py (tasks, queues, object keys), vocabulary.py (schedulers, formats,
defaults, limits, input images), wire.py (the version and the tolerant decoding), message.py
(the job message), events.py (the events, failure codes, run outcomes). Import from here.
"""

from __future__ import annotations

from sdsaas.contract.events import (
    EVENTS,
    Event,
    EventKind,
    FailureCode,
    JobFailed,
    JobPreempted,
    JobProgress,
    JobReceived,
    JobStarted,
    JobSucceeded,
    RunOutcome,
    event_from_wire,
    events_to_wire,
)
from sdsaas.contract.message import (
    GenerationInput,
    JobMessage,
    LoraChoice,
    LoraRef,
    ModelRef,
)
from sdsaas.contract.names import (
    TASK_DISCORD_DISPATCH,
    TASK_DISCORD_MESSAGE_DELETE,
    TASK_DISCORD_PRUNE,
    TASK_DISCORD_REPLY_SYNC,
    TASK_FETCH_INPUT_IMAGE,
    TASK_GPU_GENERATE,
    TASK_JOB_EVENTS,
    TASK_PRUNE_RECORDS,
    TASK_RECONCILE_LOST,
    TASK_SCALING_PUBLISH,
    TASK_SWEEP_DEAD_LETTERS,
    TASK_SWEEP_UNPUBLISHED,
    TASK_WEBHOOK_DELIVER,
    TASK_WEBHOOKS_DISPATCH,
    TASK_WEBHOOKS_PRUNE,
    cancel_marker_key,
    control_queue_name,
    dead_letter_queue_name,
    discord_queue_name,
    input_image_key,
    job_output_prefix,
    model_queue_name,
    output_key,
    upload_key,
    webhooks_queue_name,
)
from sdsaas.contract.vocabulary import (
    DEFAULT_OUTPUT_FORMAT,
    DEFAULT_SCHEDULER,
    DEFAULT_STRENGTH,
    INPUT_IMAGE_FORMATS,
    MAX_STEPS_CEILING,
    SEED_MAX,
    JobKind,
    OutputFormat,
    Scheduler,
    UnreadableImage,
    decode_input_image,
)
from sdsaas.contract.wire import CONTRACT_VERSION, version_of

__all__ = [
    "CONTRACT_VERSION",
    "DEFAULT_OUTPUT_FORMAT",
    "DEFAULT_SCHEDULER",
    "DEFAULT_STRENGTH",
    "EVENTS",
    "INPUT_IMAGE_FORMATS",
    "MAX_STEPS_CEILING",
    "SEED_MAX",
    "TASK_DISCORD_DISPATCH",
    "TASK_DISCORD_MESSAGE_DELETE",
    "TASK_DISCORD_PRUNE",
    "TASK_DISCORD_REPLY_SYNC",
    "TASK_FETCH_INPUT_IMAGE",
    "TASK_GPU_GENERATE",
    "TASK_JOB_EVENTS",
    "TASK_PRUNE_RECORDS",
    "TASK_RECONCILE_LOST",
    "TASK_SCALING_PUBLISH",
    "TASK_SWEEP_DEAD_LETTERS",
    "TASK_SWEEP_UNPUBLISHED",
    "TASK_WEBHOOKS_DISPATCH",
    "TASK_WEBHOOKS_PRUNE",
    "TASK_WEBHOOK_DELIVER",
    "Event",
    "EventKind",
    "FailureCode",
    "GenerationInput",
    "JobFailed",
    "JobKind",
    "JobMessage",
    "JobPreempted",
    "JobProgress",
    "JobReceived",
    "JobStarted",
    "JobSucceeded",
    "LoraChoice",
    "LoraRef",
    "ModelRef",
    "OutputFormat",
    "RunOutcome",
    "Scheduler",
    "UnreadableImage",
    "cancel_marker_key",
    "control_queue_name",
    "dead_letter_queue_name",
    "decode_input_image",
    "discord_queue_name",
    "event_from_wire",
    "events_to_wire",
    "input_image_key",
    "job_output_prefix",
    "model_queue_name",
    "output_key",
    "upload_key",
    "version_of",
    "webhooks_queue_name",
]
