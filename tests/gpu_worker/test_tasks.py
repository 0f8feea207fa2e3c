"""How a GPU task settles a batch it abandons (gpu_worker/tasks.py `abandon_jobs`): the jobs being
run as their reason says (on a stop, those not run yet too), the ones that ended as they ended,
the others and the messages left for later handed back, every heartbeat stopped first. SQS calls
and the process's end are recorded instead of made: what is checked is which message gets what."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from botocore.exceptions import EndpointConnectionError

from gpu_worker import tasks
from gpu_worker.runner import PartlyRun
from sdsaas.broker.sqs import ensure_model_queue, model_queue_name
from sdsaas.broker.transport import Taken
from sdsaas.contract import JobFailed, RunOutcome
from tests.support.aws import LocalAws
from tests.support.job_messages import message as job_message


class Beat:
    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def member(n: int) -> tasks.Member:
    message = job_message(Path("/m"), f"job_{n}", seed=n)
    return tasks.Member(message, 1, {"queue_url": "q", "receipt_handle": f"r{n}"})


def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """What `abandon_jobs` sends, deletes, hands back, copies and ends, recorded in order."""
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(tasks, "send_event", lambda event: calls.append(("event", event)))
    monkeypatch.setattr(
        tasks,
        "delete_messages",
        lambda infos: calls.extend(("delete", info["receipt_handle"]) for info in infos),
    )
    monkeypatch.setattr(
        tasks,
        "hand_back",
        lambda info, after_s: calls.append(("hand back", info["receipt_handle"])),
    )
    monkeypatch.setattr(
        tasks,
        "requeue_as_next_attempt",
        lambda message, attempt: calls.append(("copy", (message.job_id, attempt + 1))) or True,
    )
    monkeypatch.setattr(tasks, "end_process", lambda restart: calls.append(("end", restart)))
    return calls


def test_an_abandoned_batch_settles_each_message_by_where_its_job_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a batch run one by one: job 0 ended, job 1 runs past its limit, job 2 has not run,
    # and a message of another key left for later
    calls = recorded(monkeypatch)
    members = [member(n) for n in range(3)]
    beats = [Beat(), Beat(), Beat()]
    left = tasks.Later(Taken("gpu.generate", {}, "q", "r9", 1, {}), Beat())  # type: ignore[arg-type]
    # when the watchdog abandons it
    tasks.abandon_jobs(
        members,
        [left],
        beats,  # type: ignore[arg-type]
        "timeout",
        [1],
        {0: RunOutcome.SUCCEEDED},
    )
    # then every heartbeat stopped, the job that ran past its limit failed as timeout and its
    # message is deleted, the one that ended is deleted, the others are handed back at once
    assert all(beat.stopped for beat in [*beats, left.heartbeat])
    [event] = [payload for kind, payload in calls if kind == "event"]
    assert isinstance(event, JobFailed) and (event.job_id, event.code) == ("job_1", "timeout")
    settled = [(kind, payload) for kind, payload in calls if kind != "event"]
    assert settled == [
        ("delete", "r0"),
        ("delete", "r1"),
        ("hand back", "r2"),
        ("hand back", "r9"),
        ("end", True),
    ]


def test_a_batch_abandoned_as_its_worker_stops_sends_each_unended_job_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a batch run one by one: job 0 ended, job 1 runs, job 2 has not run
    calls = recorded(monkeypatch)
    members = [member(n) for n in range(3)]
    # when the watchdog abandons it at the end of the worker's stop grace
    tasks.abandon_jobs(members, [], [Beat(), Beat(), Beat()], "preempted", [1], {0: "succeeded"})  # type: ignore[arg-type]
    # then the running job and the one not run yet are both preempted: each is sent again as
    # its next attempt (a copy, which uses none of the receives SQS dead-letters after) and its
    # message deleted; nothing is handed back
    preempted = [payload.job_id for kind, payload in calls if kind == "event"]
    assert preempted == ["job_1", "job_2"]
    settled = [(kind, payload) for kind, payload in calls if kind not in {"event", "end"}]
    assert settled == [
        ("delete", "r0"),
        ("copy", ("job_1", 2)),
        ("delete", "r1"),
        ("copy", ("job_2", 2)),
        ("delete", "r2"),
    ]


def test_jobs_that_ended_before_their_batch_raised_are_settled_as_they_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a task whose batch ran one by one: its own job and the next one succeeded, then the
    # third job's upload failed for good after an S3 outage (no outcome of the job)
    calls = recorded(monkeypatch)
    delivered, *batch = [member(n) for n in range(3)]
    monkeypatch.setattr(tasks, "held", lambda info: contextlib.nullcontext())
    monkeypatch.setattr(tasks, "take_batch", lambda member: (batch, []))
    ended = {0: RunOutcome.SUCCEEDED, 1: RunOutcome.SUCCEEDED}
    outage = EndpointConnectionError(endpoint_url="https://s3")

    def partly_run(*args: Any, **kwargs: Any) -> list[RunOutcome]:
        raise PartlyRun(outage, ended)

    monkeypatch.setattr(tasks, "run_jobs", partly_run)
    # when the task runs
    tasks.generate.push_request(delivery_info=delivered.delivery_info)
    try:
        outcome = tasks.generate.run(job=delivered.message.to_wire())
    finally:
        tasks.generate.pop_request()
    # then its own job's outcome stands, the two that succeeded are deleted (not run again),
    # and only the third is handed back to be tried again later
    assert outcome == RunOutcome.SUCCEEDED
    assert [call for call in calls if call[0] != "event"] == [
        ("delete", "r0"),
        ("delete", "r1"),
        ("hand back", "r2"),
    ]


def test_a_batch_s_messages_are_deleted_ten_at_a_time_and_a_bad_receipt_only_logs(
    local_aws: LocalAws, caplog: pytest.LogCaptureFixture
) -> None:
    # given 12 messages received from a queue of the local SQS server
    sqs = local_aws.client("sqs")
    url = sqs.create_queue(QueueName=f"delete-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    for n in range(12):
        sqs.send_message(QueueUrl=url, MessageBody=f"job {n}")
    received: list[dict[str, Any]] = []
    while len(received) < 12:
        received += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    infos = [{"queue_url": url, "receipt_handle": m["ReceiptHandle"]} for m in received]
    calls: list[int] = []
    client = tasks.sqs_client()
    batch_delete = client.delete_message_batch

    def counted(**kwargs: Any) -> Any:
        calls.append(len(kwargs["Entries"]))
        return batch_delete(**kwargs)

    # when they are deleted together, with one receipt that SQS refuses among them
    refused = {"queue_url": url, "receipt_handle": "not-a-receipt"}
    with (
        mock.patch.object(client, "delete_message_batch", counted),
        mock.patch.object(tasks, "sqs_client", return_value=client),
    ):
        deleted = tasks.delete_messages([*infos, refused])
    # then two calls deleted every message, and the refused one was logged, not raised
    assert calls == [10, 3]
    assert deleted == {info["receipt_handle"] for info in infos}
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    assert "could not delete the message of a run job" in caplog.text


def test_a_preempted_job_s_copy_is_its_next_attempt_in_the_same_trace(local_aws: LocalAws) -> None:
    # given a traced job of a model whose queue exists, preempted on its first attempt
    trace_parent = f"00-{'ab' * 16}-{'cd' * 8}-01"
    message = job_message(Path("/m"), "job_7", seed=7).traced(trace_parent)
    ensure_model_queue(message.model.slug)
    # when its copy is sent
    assert tasks.requeue_as_next_attempt(message, 1)
    # then the queue holds it as attempt 2, its trace context in the message's attributes
    [task] = local_aws.drain_tasks(model_queue_name(message.model.slug), attributes=True)
    assert task["kwargs"]["job"]["attempt"] == 2
    assert task["attributes"]["traceparent"]["StringValue"] == trace_parent
