"""A busy worker takes its queue's next message ahead (sdsaas/broker/transport.py, `take_ahead`).

Against the local SQS server, with the transport's own channel and a consumer that acks as the
solo pool's tasks do: the message taken while a task reports is delivered from the same callback
once that task was acked, received once; a worker that stops meanwhile hands it back at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any
from unittest import mock

import pytest
from kombu import Connection

from sdsaas.broker import transport
from sdsaas.broker.sqs import ensure_model_queue, forget_queues, model_queue_name
from sdsaas.celery import app as celery_app

pytestmark = pytest.mark.usefixtures("local_aws")


@pytest.fixture
def connection() -> Iterator[Connection]:
    forget_queues()
    with celery_app.connection_for_read() as conn:
        yield conn
    forget_queues()


class Consumer:
    """Records each message's number and receive count, and acks it; the first one's task takes
    the next `ahead` messages ahead (and, if told, the worker then stops); the next task takes
    what was held for it (`took`, settled as its batch)."""

    def __init__(self, channel: Any, *, stop_after_taking_ahead: bool = False, ahead: int = 1):
        self.channel = channel
        self.stop_after_taking_ahead = stop_after_taking_ahead
        self.ahead = ahead
        self.stopping = False
        self.seen: list[tuple[int, str]] = []
        self.took: list[transport.Taken] = []

    def __call__(self, message: Any) -> None:
        count = message.delivery_info["sqs_message"]["Attributes"]["ApproximateReceiveCount"]
        self.seen.append((message.decode()[1]["n"], count))
        if len(self.seen) == 1:
            self.channel.take_ahead(self.ahead)
            self.stopping = self.stop_after_taking_ahead
        elif len(self.seen) == 2 and self.ahead > 1:
            self.took = self.channel.take_now(self.ahead + 5)
            sqs = self.channel.sqs(queue=message.delivery_info["routing_key"])
            for taken in self.took:
                sqs.delete_message(QueueUrl=taken.queue_url, ReceiptHandle=taken.receipt_handle)
        message.ack()


def queue_with(messages: int, name: str) -> tuple[str, str]:
    url = ensure_model_queue(name)
    for n in range(messages):
        celery_app.send_task("tests.take_ahead", kwargs={"n": n}, queue=model_queue_name(name))
    return model_queue_name(name), url


def gpu_channel(connection: Connection) -> transport.Channel:
    """The connection's channel, with a GPU worker's prefetch of 1."""
    channel = connection.default_channel
    assert isinstance(channel, transport.Channel)
    channel.basic_qos(0, 1, False)
    return channel


def consume(connection: Connection, consumer_of: Any, qname: str) -> tuple[Any, Any]:
    channel = gpu_channel(connection)
    consumer = consumer_of(channel)
    channel.basic_consume(qname, no_ack=False, callback=consumer, consumer_tag="gpu")
    return channel, consumer


def test_the_message_taken_ahead_is_delivered_after_the_ack_received_once(
    connection: Connection, local_aws: Any
) -> None:
    # given a queue of three messages and a worker whose poll returned the first
    qname, url = queue_with(3, "ahead")
    channel, consumer = consume(connection, Consumer, qname)
    first, _ = channel._receive_now(qname)
    # when its task takes the next one ahead while it reports
    delivered = channel._on_messages_ready(url, qname, {"Messages": first})
    # then the next one ran from the same answer, once the first was acked, each received once
    assert delivered == 2
    assert [count for _, count in consumer.seen] == ["1", "1"]
    # and only the message nobody took ahead is left, never received
    left = local_aws.client("sqs").receive_message(
        QueueUrl=url, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )["Messages"]
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in left] == ["1"]
    assert len({n for n, _ in consumer.seen}) == 2


def test_a_worker_that_stops_hands_the_message_taken_ahead_back_at_once(
    connection: Connection, local_aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a worker whose first task takes the next message ahead and then is told to stop
    qname, url = queue_with(2, "ahead-stop")
    channel, consumer = consume(
        connection, lambda channel: Consumer(channel, stop_after_taking_ahead=True), qname
    )
    monkeypatch.setattr(transport, "worker_stopping", lambda: consumer.stopping)
    first, _ = channel._receive_now(qname)
    # when the poll's answer is handled
    delivered = channel._on_messages_ready(url, qname, {"Messages": first})
    # then only the first ran, and the one taken ahead is visible again at once
    assert delivered == 1 and len(consumer.seen) == 1
    back = local_aws.client("sqs").receive_message(
        QueueUrl=url, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )["Messages"]
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in back] == ["2"]


def test_a_task_takes_messages_now_runs_one_and_leaves_the_rest_for_after_it(
    connection: Connection, local_aws: Any
) -> None:
    # given a queue of four messages and a worker whose poll returned the first
    qname, url = queue_with(4, "take-now")
    channel = gpu_channel(connection)
    seen: list[tuple[int, str]] = []
    taken: list[transport.Taken] = []
    released: list[int] = []  # the holds on the messages left for later, in the order let go
    sqs = local_aws.client("sqs")

    def on_message(message: Any) -> None:
        count = message.delivery_info["sqs_message"]["Attributes"]["ApproximateReceiveCount"]
        seen.append((message.decode()[1]["n"], count))
        if len(seen) == 1:  # the first task takes three more now, runs one, leaves two
            taken.extend(channel.take_now(3))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=taken[0].receipt_handle)
            holds = [(item, partial(released.append, item.kwargs["n"])) for item in taken[1:]]
            channel.deliver_later(holds)
        message.ack()

    channel.basic_consume(qname, no_ack=False, callback=on_message, consumer_tag="gpu")
    first, _ = channel._receive_now(qname)
    # when the poll's answer is handled
    delivered = channel._on_messages_ready(url, qname, {"Messages": first})
    # then the task got them decoded as Celery gets them, each received once
    assert [(t.task, t.receive_count) for t in taken] == [("tests.take_ahead", 1)] * 3
    assert taken[0].queue_url == url
    # and the two it left ran after it, in order, on their first receive, each let go by its
    # hold just before
    assert delivered == 3
    assert released == [t.kwargs["n"] for t in taken[1:]]
    assert [n for n, _ in seen[1:]] == [t.kwargs["n"] for t in taken[1:]]
    assert [count for _, count in seen] == ["1", "1", "1"]
    assert len({n for n, _ in seen} | {taken[0].kwargs["n"]}) == 4
    assert "Messages" not in sqs.receive_message(QueueUrl=url)


def test_the_next_batch_is_taken_ahead_whole_and_its_task_gets_the_rest_without_a_receive(
    connection: Connection, local_aws: Any
) -> None:
    # given a queue of six messages and a worker whose poll returned the first
    qname, url = queue_with(6, "ahead-batch")
    channel, consumer = consume(connection, partial(Consumer, ahead=3), qname)
    first, _ = channel._receive_now(qname)
    # when its task takes the next three ahead, and the next task takes all it can
    delivered = channel._on_messages_ready(url, qname, {"Messages": first})
    # then the next task ran from the same answer, and got the two held for it, all received
    # once, though it asked for more
    assert delivered == 2
    assert [count for _, count in consumer.seen] == ["1", "1"]
    assert [(t.task, t.receive_count) for t in consumer.took] == [("tests.take_ahead", 1)] * 2
    numbers = [n for n, _ in consumer.seen] + [t.kwargs["n"] for t in consumer.took]
    assert len(set(numbers)) == 4
    # and the two left were never received
    left = local_aws.client("sqs").receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    )["Messages"]
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in left] == ["1", "1"]


def test_a_worker_that_stops_hands_back_the_whole_batch_taken_ahead_at_once(
    connection: Connection, local_aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a worker whose first task takes the next three ahead and then is told to stop
    qname, url = queue_with(4, "ahead-batch-stop")
    channel, consumer = consume(
        connection, partial(Consumer, stop_after_taking_ahead=True, ahead=3), qname
    )
    monkeypatch.setattr(transport, "worker_stopping", lambda: consumer.stopping)
    first, _ = channel._receive_now(qname)
    # when the poll's answer is handled
    delivered = channel._on_messages_ready(url, qname, {"Messages": first})
    # then only the first ran, and the three taken ahead are visible again at once
    assert delivered == 1 and consumer.took == []
    back = local_aws.client("sqs").receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    )["Messages"]
    assert sorted(m["Attributes"]["ApproximateReceiveCount"] for m in back) == ["2", "2", "2"]


def test_a_message_its_task_deleted_itself_is_acked_without_a_delete_of_its_own(
    connection: Connection, local_aws: Any
) -> None:
    # given a worker whose tasks delete their own message (with their batch's), the first of two
    # saying so to the channel
    qname, url = queue_with(2, "deleted-by-task")
    channel = gpu_channel(connection)
    sqs = channel.sqs(queue=qname)
    deletes: list[str] = []
    delete = sqs.delete_message

    def counted(**kwargs: Any) -> Any:
        deletes.append(kwargs["ReceiptHandle"])
        return delete(**kwargs)

    def on_message(message: Any) -> None:
        handle = message.delivery_info["sqs_message"]["ReceiptHandle"]
        if message.decode()[1]["n"] == 0:
            local_aws.client("sqs").delete_message(QueueUrl=url, ReceiptHandle=handle)
            channel.deleted_by_task(handle)
        message.ack()

    channel.basic_consume(qname, no_ack=False, callback=on_message, consumer_tag="gpu")
    with mock.patch.object(sqs, "delete_message", counted):
        for _ in range(2):
            received, _ = channel._receive_now(qname)
            channel._on_messages_ready(url, qname, {"Messages": received})
    # then only the other one's ack deleted it, and both are gone, nothing held for either
    assert len(deletes) == 1
    assert "Messages" not in local_aws.client("sqs").receive_message(QueueUrl=url)
    assert channel.qos.can_consume()


def test_what_a_task_left_for_later_is_taken_by_the_next_task_with_its_holds_let_go(
    connection: Connection, local_aws: Any
) -> None:
    # given a queue of five messages and a worker whose poll returned the first
    qname, url = queue_with(5, "later-taken")
    channel = gpu_channel(connection)
    seen: list[int] = []
    took: list[list[transport.Taken]] = []
    released: list[int] = []
    sqs = local_aws.client("sqs")

    def on_message(message: Any) -> None:
        seen.append(message.decode()[1]["n"])
        taken = channel.take_now(3 if len(seen) == 1 else 5)
        took.append(taken)
        if len(seen) == 1:  # the first task leaves the three it took for later
            channel.deliver_later([(t, partial(released.append, t.kwargs["n"])) for t in taken])
        else:  # the next one runs the others left with it
            for t in taken:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=t.receipt_handle)
        message.ack()

    channel.basic_consume(qname, no_ack=False, callback=on_message, consumer_tag="gpu")
    first, _ = channel._receive_now(qname)
    # when the poll's answer is handled
    delivered = channel._on_messages_ready(url, qname, {"Messages": first})
    # then the first left over ran next and took the other two, without a receive of its own,
    # each of the three's hold let go before it went to the task
    assert delivered == 2
    left = [t.kwargs["n"] for t in took[0]]
    assert seen[1] == left[0] and [t.kwargs["n"] for t in took[1]] == left[1:]
    assert sorted(released) == sorted(left)
    # and the fifth message was never received
    rest = sqs.receive_message(QueueUrl=url, MessageSystemAttributeNames=["All"])["Messages"]
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in rest] == ["1"]


class SlowReport(Consumer):
    """The first task's report (after it took the next message ahead) lasts `report_s`, as an
    outage of the control plane would make it: the transport's clock moves on by that much."""

    def __init__(self, channel: Any, *, report_s: float, clock: list[float]) -> None:
        super().__init__(channel)
        self.report_s, self.clock = report_s, clock

    def __call__(self, message: Any) -> None:
        super().__call__(message)
        if len(self.seen) == 1:
            self.channel._ahead[1].result()  # the receive ahead answered before the report ends
            self.clock[0] += self.report_s


@pytest.mark.parametrize(
    ("report_of_timeout", "visible_again"),
    [(0.75, True), (1.0, False)],
    ids=["still-ours-handed-back", "past-its-timeout-left-alone"],
)
def test_a_message_taken_ahead_during_a_report_past_half_its_timeout_is_not_run_there(
    connection: Connection,
    local_aws: Any,
    monkeypatch: pytest.MonkeyPatch,
    report_of_timeout: float,
    visible_again: bool,
) -> None:
    # given a worker whose first task takes the next message ahead, then reports for a fraction
    # of the messages' invisibility (the clock the transport reads moves; SQS's does not)
    qname, url = queue_with(2, f"ahead-slow-{int(report_of_timeout * 100)}")
    clock = [0.0]
    monkeypatch.setattr(transport.time, "monotonic", lambda: clock[0])
    channel, consumer = consume(
        connection,
        lambda ch: SlowReport(ch, report_s=report_of_timeout * ch.visibility_timeout, clock=clock),
        qname,
    )
    first, _ = channel._receive_now(qname)
    # when the poll's answer is handled
    delivered = channel._on_messages_ready(url, qname, {"Messages": first})
    # then the message taken ahead did not run on this worker (too little of its time is left)
    assert delivered == 1 and len(consumer.seen) == 1
    # and, while still its own, the worker made it visible again at once: the next receive gets
    # it; past its timeout it left it alone (SQS's own clock has not run: it stays invisible)
    back = (
        local_aws.client("sqs")
        .receive_message(QueueUrl=url, MessageSystemAttributeNames=["ApproximateReceiveCount"])
        .get("Messages", [])
    )
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in back] == (
        ["2"] if visible_again else []
    )
