"""The visibility heartbeat against the local SQS: a held message stays invisible past its base
timeout, and comes back within about one base timeout once the heartbeat stops."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from gpu_worker.heartbeat import VisibilityHeartbeat
from tests.support.aws import LocalAws

BASE_S = 2  # the queue's visibility timeout
INTERVAL_S = 0.5


def received_message(local_aws: LocalAws) -> tuple[Any, str, str]:
    """(client, queue URL, receipt handle) of a message just received from a fresh queue."""
    sqs = local_aws.client("sqs")
    url = sqs.create_queue(
        QueueName=f"heartbeat-{uuid.uuid4().hex[:8]}",
        Attributes={"VisibilityTimeout": str(BASE_S)},
    )["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="job")
    (message,) = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
    return sqs, url, message["ReceiptHandle"]


def visible(sqs: Any, url: str) -> bool:
    """Whether the message can be received now (it is put back at once if so)."""
    messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", [])
    for message in messages:
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    return bool(messages)


def seconds_until_visible(sqs: Any, url: str, timeout: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if visible(sqs, url):
            return time.monotonic() - began
        time.sleep(0.1)
    raise AssertionError(f"the message did not come back within {timeout}s")


def stays_invisible(sqs: Any, url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if visible(sqs, url):
            return False
        time.sleep(0.2)
    return True


def heartbeat(client: Any, url: str, receipt: str, ceiling_s: float = 60) -> VisibilityHeartbeat:
    return VisibilityHeartbeat(
        client,
        queue_url=url,
        receipt_handle=receipt,
        visibility_s=BASE_S,
        interval_s=INTERVAL_S,
        ceiling_s=ceiling_s,
    )


def test_a_held_message_stays_invisible_past_its_timeout_and_returns_once_let_go(
    local_aws: LocalAws,
) -> None:
    # given a received message of a queue whose visibility timeout is 2 s
    sqs, url, receipt = received_message(local_aws)
    # when a heartbeat holds it for twice that long
    with heartbeat(local_aws.client("sqs"), url, receipt):
        # then nobody can receive it meanwhile
        assert stays_invisible(sqs, url, 2 * BASE_S + 1)
    # and once the heartbeat stops, it is back within about one base timeout
    assert seconds_until_visible(sqs, url, timeout=BASE_S + 2) <= BASE_S + 1


def test_the_heartbeat_stops_extending_after_its_ceiling(local_aws: LocalAws) -> None:
    # given a message held by a heartbeat with a ceiling of 2 s (a hung job)
    sqs, url, receipt = received_message(local_aws)
    with heartbeat(local_aws.client("sqs"), url, receipt, ceiling_s=BASE_S):
        # then it comes back while the heartbeat is still entered: after the ceiling plus the base
        began = time.monotonic()
        seconds_until_visible(sqs, url, timeout=2 * BASE_S + 3)
        assert time.monotonic() - began >= BASE_S


class FailsOnce:
    """An SQS client whose first ChangeMessageVisibility cannot reach the endpoint."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls = 0

    def change_message_visibility(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        return self.client.change_message_visibility(**kwargs)


def test_a_failed_beat_is_logged_and_the_next_one_holds_the_message(
    local_aws: LocalAws, caplog: pytest.LogCaptureFixture
) -> None:
    # given a heartbeat whose first beat fails (SQS unreachable for a moment)
    sqs, url, receipt = received_message(local_aws)
    flaky = FailsOnce(local_aws.client("sqs"))
    with caplog.at_level(logging.WARNING, logger="gpu_worker.heartbeat"):
        with heartbeat(flaky, url, receipt):
            # then the next beats keep the message invisible past its timeout
            assert stays_invisible(sqs, url, BASE_S + 1)
        assert flaky.calls >= 3
    # and the failure was logged
    assert "could not extend the visibility" in caplog.text
