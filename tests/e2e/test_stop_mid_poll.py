"""A worker stopped while its SQS long poll is open hands back what that poll returns (issue 9).

SQS cannot take back a ReceiveMessage that is already waiting: a message that reaches the queue
while it waits is received (counted, and hidden for the visibility timeout) even when the worker
that asked has stopped reading. Each stop here lands while the worker's poll is open, and a
message is sent to its queue right after, at delays that put its arrival both before and after
the worker's event loop ended. The message must be back on the queue at once, not after the
visibility timeout, and the worker must never have run it.

The workers are Celery workers of the GPU workers' app (`-A gpu_worker.app`, the app
`gpu_worker.worker` runs) with the GPU role's settings: the same transport and transport options,
solo pool, prefetch 1 and the same warm shutdown (SIGTERM). Only the GPU task module is not
loaded: it imports torch (seconds per start, 20+ starts here), and its shutdown hook bounds a
running job, which an idle worker does not have.
"""

from __future__ import annotations

import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings

from sdsaas.broker.sqs import ensure_model_queue, model_queue_name
from sdsaas.celery import app as celery_app
from tests.e2e.conftest import Workers
from tests.support.aws import LocalAws
from tests.support.https import Tls

pytestmark = pytest.mark.usefixtures("e2e_prefix")

# A task no worker has: were the message handed to Celery, it would be rejected and stay
# hidden for the queue's visibility timeout (the model queues have a redrive policy).
NEVER_RUN = "tests.e2e.stop_mid_poll.never_run"
LANES = 5  # workers at a time, each on a queue of its own
STOPS = 22
# Seconds from the stop to the message: 0 answers the poll while the event loop may still run;
# the longer ones answer it after the loop ended, when only the stop itself can still read it.
SEND_DELAYS_S = (0.0, 0.3, 1.0, 2.0, 4.0)
# After "ready" the first long poll opens at once and stays open for WAIT_TIME_S, past the
# longest send delay.
WAIT_TIME_S = 10
STOP_AFTER_READY_S = 1.0
# Well under the queue's visibility timeout: a message handed back is receivable at once.
PROMPT_S = 10.0


@dataclass
class Stop:
    """One worker on one queue: started, stopped mid-poll, sent a message, checked."""

    number: int
    queue: str
    url: str
    delay_s: float
    ready_at: float | None = None
    stopped_at: float | None = None
    sent_at: float | None = None
    exited: bool = False
    receive_count: int | None = None

    @property
    def worker(self) -> str:
        return f"idle-{self.number}"


def test_a_stop_during_an_open_long_poll_hands_back_what_the_poll_receives(
    local_aws: LocalAws, tls: Tls, tmp_path: Any
) -> None:
    assert settings.SQS_VISIBILITY_TIMEOUT >= 6 * PROMPT_S
    stack = Workers(local_aws, tmp_path, tls)
    stack.env["SDSAAS_SQS_WAIT_TIME_S"] = str(WAIT_TIME_S)
    sqs = local_aws.client("sqs")
    queues = []
    for _ in range(LANES):
        slug = f"stop{uuid.uuid4().hex[:8]}"
        queues.append((model_queue_name(slug), ensure_model_queue(slug)))
    waiting = list(range(STOPS))
    running: dict[str, Stop] = {}
    done: list[Stop] = []
    try:
        while waiting or running:
            for queue, url in queues:
                if queue not in running and waiting:
                    # given an idle worker on the queue, its long poll open
                    n = waiting.pop(0)
                    delay_s = SEND_DELAYS_S[(n + n // LANES) % len(SEND_DELAYS_S)]
                    stop = running[queue] = Stop(n, queue, url, delay_s)
                    _start_idle_worker(stack, stop)
            for queue, stop in list(running.items()):
                if _advance(stack, sqs, stop, WAIT_TIME_S):
                    done.append(running.pop(queue))
            time.sleep(0.05)
    finally:
        for name in list(stack.processes):
            stack.kill(name)
    # The stops landed while the polls were open: the stopped workers received the messages.
    mid_poll = [stop.number for stop in done if stop.receive_count == 2]
    assert len(mid_poll) >= 20, f"only {len(mid_poll)} of {STOPS} stops landed mid-poll"


def _start_idle_worker(stack: Workers, stop: Stop) -> None:
    argv = [
        "-A",
        "gpu_worker.app",
        "worker",
        "-P",
        "solo",
        "-Q",
        stop.queue,
        "-n",
        f"{stop.worker}@%h",
    ]
    stack._start(stop.worker, argv, {**stack.env, "SDSAAS_ROLE": "gpu"})


def _advance(stack: Workers, sqs: Any, stop: Stop, wait_s: float) -> bool:
    """Take `stop` one step further; True once it is checked."""
    now = time.monotonic()
    if stop.ready_at is None:
        if " ready." in stack.log(stop.worker):
            stop.ready_at = now
        return False
    if stop.stopped_at is None:
        # when the worker gets SIGTERM while its poll is open
        if now >= stop.ready_at + STOP_AFTER_READY_S:
            stack.processes[stop.worker].send_signal(signal.SIGTERM)
            stop.stopped_at = now
        return False
    if stop.sent_at is None:
        # and a message reaches its queue right after
        if now >= stop.stopped_at + stop.delay_s:
            celery_app.send_task(NEVER_RUN, kwargs={"stop": stop.number}, queue=stop.queue)
            stop.sent_at = time.monotonic()
        return False
    if not stop.exited:
        # then the worker ends within its poll's wait plus a small margin
        code = stack.processes[stop.worker].poll()
        if code is None:
            assert now < stop.stopped_at + wait_s + 15, f"{stop.worker} did not stop"
            return False
        assert code == 0, stack.log(stop.worker)
        stack.processes.pop(stop.worker)
        stop.exited = True
    # and the message is receivable again at once, received once by the stopped worker
    answer = sqs.receive_message(
        QueueUrl=stop.url, AttributeNames=["ApproximateReceiveCount"], VisibilityTimeout=60
    )
    messages = answer.get("Messages", [])
    log = stack.log(stop.worker)
    if not messages:
        assert now < stop.sent_at + PROMPT_S, (
            f"the message sent {stop.delay_s}s after {stop.worker}'s stop did not come back "
            f"within {PROMPT_S}s\n{log}"
        )
        return False
    (message,) = messages
    sqs.delete_message(QueueUrl=stop.url, ReceiptHandle=message["ReceiptHandle"])
    stop.receive_count = int(message["Attributes"]["ApproximateReceiveCount"])
    assert stop.receive_count <= 2, f"received {stop.receive_count} times\n{log}"
    assert "unregistered task" not in log
    return True
