"""Tasks sent in batches (sdsaas/broker/batch.py) are the messages `send_task` sends one by one."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import pytest
from django.conf import settings
from kombu.transport import SQS

from sdsaas.broker.batch import MAX_ENTRIES, _chunks, collecting, send_collected
from sdsaas.celery import app as celery_app
from sdsaas.celery import publisher_pool

pytestmark = pytest.mark.usefixtures("local_aws")

# What the batch relies on in kombu's SQS channel: `_put` sends each message with one
# `self.sqs(...).send_message(**kwargs)` as its last step, and `sqs` takes the queue's name. When
# kombu changes them, re-read `_put` and re-fit sdsaas/broker/batch.py, then update this digest.
PUT_SOURCE_DIGEST = "abbc7aaeaa2c49c8"
# Per message: its own ids (the task's, kombu's delivery tag), and where SQS delivered it from.
OWN = {"id", "root_id", "correlation_id", "delivery_tag", "delivery_info"}


def test_kombus_put_still_sends_as_the_batch_expects() -> None:
    source = inspect.getsource(SQS.Channel._put)
    assert "c.send_message(**kwargs)" in source
    assert str(inspect.signature(SQS.Channel.sqs)) == "(self, queue=None)"
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == PUT_SOURCE_DIGEST


def received(queue: str, count: int) -> list[Any]:
    """The queue's next `count` messages as a kombu consumer (a Celery worker's) receives them."""
    messages = []
    with celery_app.connection_for_read() as connection:
        channel: Any = connection.default_channel  # kombu's stubs lack basic_get
        for _ in range(count * 3):
            message = channel.basic_get(queue, no_ack=True)
            if message is not None:
                messages.append(message)
            if len(messages) == count:
                break
    return messages


def comparable(message: Any) -> tuple[Any, ...]:
    headers = {k: v for k, v in message.headers.items() if k not in OWN}
    properties = {k: v for k, v in message.properties.items() if k not in OWN}
    return headers, properties, message.content_type, message.decode()


def test_a_batch_carries_what_send_task_sends_and_a_consumer_reads_it_the_same() -> None:
    # given a queue and a task's arguments
    queue = f"{settings.SQS_QUEUE_PREFIX}-batch-shape"
    kwargs = {"job": {"job_id": "job_batch", "input": {"prompt": "a tram", "seed": 7}}}
    count = MAX_ENTRIES + 2  # two SendMessageBatch calls

    def send(task_id: str, connection: Any) -> None:
        celery_app.send_task(
            "sdsaas.test.batch_shape",
            kwargs=kwargs,
            queue=queue,
            task_id=task_id,
            connection=connection,
            retry=False,
        )

    with publisher_pool().acquire(block=True, timeout=30) as connection:
        # when the task is sent once as Celery sends it, then `count` times in batches
        send("single", connection)
        with collecting(connection) as collected:
            for i in range(count):
                send(f"batch-{i}", connection)
        assert len(collected) == count  # recorded, not sent yet
        assert send_collected(collected) == [None] * count
    # then a consumer receives each once, the batched ones equal to the one sent alone but for
    # their ids
    messages = {m.headers["id"]: m for m in received(queue, count + 1)}
    reference = messages.pop("single")
    assert sorted(messages) == sorted(f"batch-{i}" for i in range(count))
    assert all(comparable(m) == comparable(reference) for m in messages.values())
    assert reference.decode()[1] == kwargs


def test_messages_that_together_pass_sqss_batch_size_limit_go_in_several_calls() -> None:
    # given eight tasks whose prompt and negative prompt are long and multi-byte (each message
    # some 44 KiB once encoded: over SQS's 256 KiB for one SendMessageBatch together)
    queue = f"{settings.SQS_QUEUE_PREFIX}-batch-size"
    prompts = [f"{n} " + "灯台と嵐の海" * 330 for n in range(8)]
    with publisher_pool().acquire(block=True, timeout=30) as connection:
        with collecting(connection) as collected:
            for prompt in prompts:
                celery_app.send_task(
                    "sdsaas.test.batch_size",
                    kwargs={"prompt": prompt, "negative_prompt": prompt},
                    queue=queue,
                    connection=connection,
                    retry=False,
                )
        sizes = [len(item.kwargs["MessageBody"]) for item in collected]
        assert sum(sizes) > 256 * 1024 and max(sizes) < 64 * 1024
        # (moto does not enforce the limit: the calls are checked as they are cut)
        calls = _chunks(collected)
        assert len(calls) > 1 and [item for call in calls for item in call] == collected
        for call in calls:
            assert sum(len(item.kwargs["MessageBody"]) for item in call) <= 256 * 1024
        # when they are sent, then SQS takes every one, and a consumer reads each prompt once
        assert send_collected(collected) == [None] * len(prompts)
    got = sorted(message.decode()[1]["prompt"] for message in received(queue, len(prompts)))
    assert got == sorted(prompts)
