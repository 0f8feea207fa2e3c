"""The GPU Celery task: thin. The message is self-contained; the attempt comes from SQS."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_shutting_down
from celery.worker.request import Request
from django.conf import settings
from django.core.files.storage import default_storage

from gpu_worker import metrics
from gpu_worker.app import app
from gpu_worker.batch_budget import BUDGET, TAKES
from gpu_worker.events import send_event
from gpu_worker.heartbeat import VisibilityHeartbeat
from gpu_worker.protection import scale_in_protection
from gpu_worker.retry import is_transient
from gpu_worker.runner import PartlyRun, batch_key, run_jobs, time_limit_s, timeout_message
from gpu_worker.watchdog import STOP, Reason
from sdsaas import logs, telemetry
from sdsaas.broker.sqs import model_queue_name, sqs_client
from sdsaas.broker.transport import Channel, Taken
from sdsaas.contract import (
    TASK_GPU_GENERATE,
    FailureCode,
    JobFailed,
    JobMessage,
    JobPreempted,
    RunOutcome,
)

logger = logging.getLogger(__name__)


class SqsRequest(Request):
    """Keeps what Celery drops from SQS's delivery info: the receive count, the receipt and the
    trace context (the message's `traceparent` attribute); and the transport's channel, which
    takes the queue's next messages for the task (sdsaas/broker/transport.py: `take_ahead`,
    `take_now`)."""

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        raw = message.delivery_info or {}
        sqs_message = raw.get("sqs_message") or {}
        count = sqs_message.get("Attributes", {}).get("ApproximateReceiveCount", "1")
        delivery_info: dict[str, Any] = self.delivery_info  # type: ignore[assignment]
        delivery_info["receive_count"] = int(count)
        delivery_info["receipt_handle"] = sqs_message.get("ReceiptHandle")
        delivery_info["queue_url"] = raw.get("sqs_queue")
        delivery_info["trace_parent"] = telemetry.traceparent_of(sqs_message)
        delivery_info["channel"] = message.channel


class GenerateTask(Task):
    Request = "gpu_worker.tasks:SqsRequest"

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job = kwargs["job"]  # as it came: it may be what failed to decode
        attempt = int(job["attempt"]) + receive_count(self.request.delivery_info) - 1
        send_event(worker_failed(job["job_id"], attempt, exc))


def worker_failed(job_id: str, attempt: int, exc: Exception) -> JobFailed:
    """The event of a job whose task raised what is no outcome of the job (a bug)."""
    text = f"The worker failed: {exc.__class__.__name__}."
    return JobFailed(job_id, attempt, code=FailureCode.INTERNAL_ERROR, message=text)


def receive_count(delivery_info: Any) -> int:
    return int((delivery_info or {}).get("receive_count", 1))


def job_message_of(job: dict[str, Any], delivery_info: Any) -> JobMessage:
    """The job of a delivery: its task's `job` argument, in the trace its message carries (in
    its body if it was sent before the trace moved to the message's attributes)."""
    message = JobMessage.from_wire(job)
    return message.traced(str((delivery_info or {}).get("trace_parent") or message.trace_parent))


def attempt_of(message: JobMessage, delivery_info: Any) -> int:
    """The dispatch attempt plus SQS redeliveries of this message."""
    return message.attempt + receive_count(delivery_info) - 1


@worker_shutting_down.connect
def _start_stop_grace(**_: Any) -> None:
    """Celery's warm shutdown takes no new message and waits for the running job; we bound it."""
    STOP.begin(settings.GPU_STOP_GRACE_S)
    logger.info("stopping: the running job has %ss to finish", settings.GPU_STOP_GRACE_S)


# After S3 or SQS trouble that outlasted the runner's patience, the job is tried again later.
RETRY_AFTER_S = 60


def sqs_message_of(delivery_info: Any) -> tuple[str, str] | None:
    """The queue URL and receipt handle of the message being run (None outside an SQS delivery)."""
    delivery_info = delivery_info or {}
    queue_url, receipt_handle = delivery_info.get("queue_url"), delivery_info.get("receipt_handle")
    return (queue_url, receipt_handle) if queue_url and receipt_handle else None


def hand_back(delivery_info: Any, *, after_s: int) -> None:
    """Let SQS deliver the message again in `after_s` seconds instead of after its timeout.

    The next receive counts: the job runs as the next attempt, and a job handed back on every
    delivery is dead-lettered like one that kills its worker. Best effort: if SQS is away too,
    the message comes back after its visibility timeout all the same.
    """
    message = sqs_message_of(delivery_info)
    if message is None:
        return
    queue_url, receipt_handle = message
    try:
        sqs_client().change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=after_s
        )
    except Exception as exc:
        logger.warning("could not hand the message back early: %s", exc)


def held(delivery_info: Any) -> contextlib.AbstractContextManager[VisibilityHeartbeat | None]:
    """Keeps the message invisible while the job runs, by the heartbeat of the settings."""
    message = sqs_message_of(delivery_info)
    if message is None:
        return contextlib.nullcontext()
    return visibility_heartbeat(*message)


def visibility_heartbeat(queue_url: str, receipt_handle: str) -> VisibilityHeartbeat:
    return VisibilityHeartbeat(
        # One try per beat, with short timeouts: a failed beat is tried again at the next one.
        sqs_client(fail_fast=True),
        queue_url=queue_url,
        receipt_handle=receipt_handle,
        visibility_s=settings.SQS_VISIBILITY_TIMEOUT,
        interval_s=settings.GPU_HEARTBEAT_S,
        ceiling_s=settings.GPU_JOB_TIME_LIMIT_S,
    )


@dataclass(frozen=True)
class Member:
    """A job the task runs: the message it was delivered, or one of its micro-batch."""

    message: JobMessage
    attempt: int
    delivery_info: Any


@app.task(
    bind=True,
    base=GenerateTask,
    name=TASK_GPU_GENERATE,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def generate(self: Task, job: dict[str, Any]) -> RunOutcome:
    delivery_info = self.request.delivery_info
    message = job_message_of(job, delivery_info)
    attempt = attempt_of(message, delivery_info)
    logs.bind(attempt=attempt)
    logger.info("job %s attempt %s (contract v%s)", message.job_id, attempt, message.v)
    delivered = Member(message, attempt, delivery_info)
    batch: list[Member] = []
    try:
        # The heartbeats stop when the jobs end, before any hand-back, ack or reject below (those
        # of the messages left for later when the channel delivers them).
        with contextlib.ExitStack() as holding:
            holding.enter_context(scale_in_protection().busy())
            heartbeats = [holding.enter_context(held(delivery_info))]
            batch, later = take_batch(delivered)
            for member in batch:  # each beating in its own job's log context
                with logs.bound(job_id=member.message.job_id, attempt=member.attempt):
                    heartbeats.append(holding.enter_context(held(member.delivery_info)))
            members = [delivered, *batch]
            outcomes = run_jobs(
                [(m.message, m.attempt) for m in members],
                storage=default_storage,
                abandon=partial(abandon_jobs, members, later, heartbeats),
                work_done=take_ahead_of(delivered),
            )
    except Exception as exc:
        # The jobs that ended before it (a batch run one by one) are settled as they ended.
        error, ended = (exc.error, exc.outcomes) if isinstance(exc, PartlyRun) else (exc, {})
        members = [delivered, *batch]
        delivered_done = settle_ended(members, ended)
        for index, member in enumerate(members[1:], start=1):
            if index not in ended:
                settle_after_error(member, error)
        metrics.count_raised(len(members) - len(ended), transient=is_transient(error))
        if 0 in ended:  # the task's own job ended: its batch's error is only logged
            logger.error("a job of the batch failed after this one ended", exc_info=error)
            return delivered_outcome(ended[0], delivered_done)
        if not is_transient(error):
            raise error from None
        # Not Celery's retry: it publishes a copy whose receive count starts again at 1, so the
        # copy would run under an attempt older than the one the job row holds, and be fenced.
        hand_back(delivery_info, after_s=RETRY_AFTER_S)
        raise Reject(f"transient: {error.__class__.__name__}", requeue=False) from error
    delivered_done = settle_ended([delivered, *batch], dict(enumerate(outcomes)))
    return delivered_outcome(outcomes[0], delivered_done)


def settle_ended(members: list[Member], ended: dict[int, RunOutcome]) -> bool:
    """Settle the messages of the jobs that ended (by index), as Celery settles a delivered
    one's, and count them; whether the task's own message (index 0) was deleted with them."""
    metrics.count(list(ended.values()))
    done = {index: done_with(members[index], outcome) for index, outcome in ended.items()}
    # The delivered message is deleted with the batch's: Celery's ack then sends nothing.
    deleted = delete_messages([members[index].delivery_info for index in done if done[index]])
    delivery_info = members[0].delivery_info
    channel, mine = channel_of(delivery_info), sqs_message_of(delivery_info)
    if channel is not None and mine is not None and mine[1] in deleted:
        channel.deleted_by_task(mine[1])
    return done.get(0, False)


def delivered_outcome(outcome: RunOutcome, done: bool) -> RunOutcome:
    """The task's result: its own job's outcome, once its message was settled."""
    if not done:
        # Handed back, neither acked nor deleted (the model queues have a redrive policy, so
        # kombu keeps a rejected message): SQS redelivers it, and the next receive is attempt + 1.
        raise Reject("preempted: the worker is stopping", requeue=False)
    return outcome


@dataclass(frozen=True)
class Later:
    """A message received for a batch that does not fit it: run after the task, as if delivered
    then; kept invisible meanwhile by its own heartbeat, which the channel stops then."""

    taken: Taken
    heartbeat: VisibilityHeartbeat


def take_batch(delivered: Member) -> tuple[list[Member], list[Later]]:
    """The jobs that run with the one delivered as a micro-batch: more messages of its queue,
    those taken ahead with it or else as many of its room as `TAKES` allows, received now (those
    already waiting: none is waited for), that share its batch key (`runner.batch_key`) and
    whose images fit the batch's latency budget (gpu_worker/batch_budget.py). The others are
    left to the channel, to run after it (`Channel.deliver_later`)."""
    channel = channel_of(delivered.delivery_info)
    if channel is None:
        return [], []
    key = batch_key(delivered.message)
    jobs, images = batch_room(delivered.message)
    batch: list[Member] = []
    later: list[Later] = []
    received = channel.take_now(TAKES.limit(jobs))
    for taken in received:
        message = job_of(taken)
        if (
            message is not None
            and batch_key(message) == key
            and len(batch) < jobs
            and message.input.num_outputs <= images
        ):
            images -= message.input.num_outputs
            info = delivery_info_of(taken)
            batch.append(Member(message, attempt_of(message, info), info))
        else:
            with logs.bound(job_id=message.job_id if message else None):
                heartbeat = visibility_heartbeat(taken.queue_url, taken.receipt_handle)
            later.append(Later(taken, heartbeat.__enter__()))
    channel.deliver_later([(item.taken, item.heartbeat.stop) for item in later])
    TAKES.took(len(received), len(batch))
    if batch:
        others = ", ".join(member.message.job_id for member in batch)
        logger.info("job %s runs in a batch with %s", delivered.message.job_id, others)
    return batch, later


def batch_room(message: JobMessage) -> tuple[int, int]:
    """How many more jobs and images may run in a micro-batch with `message`: up to
    GPU_MAX_BATCH - 1 jobs (of an image at least each), their images within the latency budget;
    none for a job that is never batched, or while the worker stops."""
    key = batch_key(message)
    if key is None or settings.GPU_MAX_BATCH < 2 or STOP.at is not None:
        return 0, 0
    images = BUDGET.room(key, message.input.num_outputs, settings.GPU_BATCH_BUDGET_S)
    return min(settings.GPU_MAX_BATCH - 1, images), images


def channel_of(delivery_info: Any) -> Channel | None:
    channel = (delivery_info or {}).get("channel")
    return channel if isinstance(channel, Channel) else None


def take_ahead_of(delivered: Member) -> Callable[[], None] | None:
    """How to take the queue's next messages ahead of this task's report (None outside SQS): the
    next job's, and as many more as would run in a batch with it if it is of this one's key."""
    channel = channel_of(delivered.delivery_info)
    if channel is None:
        return None
    return lambda: channel.take_ahead(1 + TAKES.limit(batch_room(delivered.message)[0]))


def job_of(taken: Taken) -> JobMessage | None:
    if taken.task != TASK_GPU_GENERATE:
        return None
    try:
        return job_message_of(taken.kwargs["job"], delivery_info_of(taken))
    except Exception:  # delivered later, Celery's task fails it as it fails any bad message
        return None


def delivery_info_of(taken: Taken) -> dict[str, Any]:
    """As SqsRequest keeps a delivered message's."""
    return {
        "queue_url": taken.queue_url,
        "receipt_handle": taken.receipt_handle,
        "receive_count": taken.receive_count,
        "trace_parent": telemetry.traceparent_of(taken.raw),
    }


def settle(member: Member, outcome: RunOutcome) -> None:
    """Settle the message of a batch's job as Celery settles the delivered one's."""
    if done_with(member, outcome):
        delete_message(member.delivery_info)


def done_with(member: Member, outcome: RunOutcome) -> bool:
    """Whether the job's message is done with, to be deleted: unless the job was preempted and
    could not be sent again as its next attempt, in which case its message was handed back."""
    if outcome != RunOutcome.PREEMPTED or requeue_as_next_attempt(member.message, member.attempt):
        return True
    hand_back(member.delivery_info, after_s=0)
    return False


def settle_after_error(member: Member, exc: Exception) -> None:
    """A batch's job when the task raised: tried again later (transient), or failed as Celery
    fails the delivered job (GenerateTask.on_failure), its message acked."""
    if is_transient(exc):
        hand_back(member.delivery_info, after_s=RETRY_AFTER_S)
        return
    send_event(worker_failed(member.message.job_id, member.attempt, exc))
    delete_message(member.delivery_info)


def abandon_jobs(
    members: list[Member],
    later: list[Later],
    heartbeats: list[VisibilityHeartbeat | None],
    reason: Reason,
    running: list[int],
    finished: dict[int, RunOutcome],
) -> NoReturn:
    """Settle jobs that did not end in-process when they had to, then end this process.

    Runs on the jobs' watchdog thread (gpu_worker/watchdog.py) while the work of `members[i]` for
    each i of `running` may still go on: what each of them would have reported, it reports here,
    and its message is settled as the task would have, so that nothing waits for a visibility
    timeout. The jobs that ended already (`finished`, a batch run one by one) are settled by how
    they ended; those not run yet are preempted as the running ones are when the worker stops
    (sent again as their next attempt), else handed back, as the messages left for later are.
    Then the process ends: a stopping worker exits; any other starts again in place (same PID,
    fresh memory).
    """
    for heartbeat in [*heartbeats, *(item.heartbeat for item in later)]:
        if heartbeat is not None:
            heartbeat.stop()  # before the messages are settled: a late beat must not hide one
    for index, member in enumerate(members):
        if index in running or (reason == "preempted" and index not in finished):
            abandon_job(member, reason)  # preempted, run or not: sent again as its next attempt
        elif index in finished:
            settle(member, finished[index])
        else:
            hand_back(member.delivery_info, after_s=0)
    for item in later:
        hand_back(delivery_info_of(item.taken), after_s=0)
    end_process(restart=STOP.at is None)


def abandon_job(member: Member, reason: Reason) -> None:
    job_id, attempt, delivery_info = member.message.job_id, member.attempt, member.delivery_info
    if reason == "timeout":
        text = timeout_message(time_limit_s(member.message))
        send_event(JobFailed(job_id, attempt, code=FailureCode.TIMEOUT, message=text))
        delete_message(delivery_info)
    elif reason == "preempted":
        send_event(JobPreempted(job_id, attempt))
        settle(member, RunOutcome.PREEMPTED)
    else:  # canceled: the control plane already made the job final
        delete_message(delivery_info)
    logger.warning("job %s abandoned (%s)", job_id, reason)


def delete_message(delivery_info: Any) -> None:
    """Ack the message of the job being run, outside Celery (best effort, as `hand_back`)."""
    delete_messages([delivery_info])


# SQS's limit of a DeleteMessageBatch call.
DELETE_BATCH_ENTRIES = 10


def delete_messages(delivery_infos: list[Any]) -> set[str]:
    """`delete_message` of each, up to 10 of a queue in one DeleteMessageBatch call (best
    effort, as `hand_back`); the receipt handles of those deleted."""
    by_queue: dict[str, list[str]] = {}
    for info in delivery_infos:
        message = sqs_message_of(info)
        if message is not None:
            by_queue.setdefault(message[0], []).append(message[1])
    deleted: set[str] = set()
    for queue_url, handles in by_queue.items():
        for start in range(0, len(handles), DELETE_BATCH_ENTRIES):
            chunk = handles[start : start + DELETE_BATCH_ENTRIES]
            entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)]
            try:
                answer = sqs_client().delete_message_batch(QueueUrl=queue_url, Entries=entries)
            except Exception as exc:
                logger.warning("could not delete %d message(s) of run jobs: %s", len(chunk), exc)
                continue
            for failed in answer.get("Failed", []):
                logger.warning(
                    "could not delete the message of a run job: %s %s",
                    failed.get("Code"),
                    failed.get("Message", ""),
                )
            deleted.update(chunk[int(done["Id"])] for done in answer.get("Successful", []))
    return deleted


def end_process(*, restart: bool) -> NoReturn:
    """Exit, or start this worker again in the same process (exec: same PID, same arguments).

    Nothing of the old process survives an exec: its threads, its model and GPU memory go. The
    new worker loads its model again at its first job.
    """
    telemetry.flush()  # the abandoned job's last spans: exec and _exit skip the exit handlers
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    if not restart:
        os._exit(0)
    logger.warning("restarting the worker process")
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def requeue_as_next_attempt(message: JobMessage, attempt: int) -> bool:
    """Send the job again as attempt + 1; then this message is acked as done.

    A fresh message, not a redelivery: a preemption is not the job's fault, so it must not use
    up the receives after which SQS dead-letters a job. False if SQS cannot take it now.
    """
    try:
        app.send_task(
            TASK_GPU_GENERATE,
            kwargs={"job": message.as_attempt(attempt + 1).to_wire()},
            queue=model_queue_name(message.model.slug),
            **telemetry.task_options(message.trace_parent),
        )
    except Exception as exc:
        logger.warning("could not requeue preempted job %s: %s", message.job_id, exc)
        return False
    return True
