"""Publishing Celery tasks to SQS in batches: SendMessageBatch, up to 10 messages a call.

kombu's SQS transport makes one SendMessage call per message, and Celery has no batch send (kombu
5.7's `Producer.batch` is implemented for Redis only). Each call costs the publisher a signed HTTP
request and SQS a request to serve, whatever the message's size.

The messages stay exactly what `send_task` makes, since they are made by it: on a connection of
this module's transport (the publisher's pool, `sdsaas.celery.publisher_pool`), inside
`collecting`, Celery and kombu build and encode each message as usual down to kombu's
`Channel._put`, whose final `send_message(**kwargs)` is recorded instead of made. `send_collected`
then sends the recorded messages with SendMessageBatch, each entry the recorded call's arguments.
Consumers cannot tell them apart from messages sent one by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sdsaas.broker import transport

# SQS's limits of a SendMessageBatch call: 10 entries, 256 KiB in all (a job message is ~1-2 KiB,
# up to ~45 KiB with the longest prompts in a script of multi-byte characters, base64 twice).
MAX_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024
# Counted for each entry beside its body: its message attributes, name and id, generously.
ENTRY_OVERHEAD_BYTES = 2048


@dataclass(frozen=True)
class Collected:
    """One SendMessage call that kombu made while collecting: the client and its arguments."""

    client: Any
    kwargs: dict[str, Any]


class _Recorder:
    """Stands in for the boto3 client that kombu's `_put` sends with: records `send_message`,
    passes every other call (queue URL lookups) through."""

    def __init__(self, client: Any, into: list[Collected]) -> None:
        self._client = client
        self._into = into

    def send_message(self, **kwargs: Any) -> None:
        self._into.append(Collected(self._client, kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class Channel(transport.Channel):
    _collected: list[Collected] | None = None

    def sqs(self, queue: str | None = None) -> Any:
        client = super().sqs(queue=queue)
        if self._collected is None:
            return client
        return _Recorder(client, self._collected)


class Transport(transport.Transport):
    Channel = Channel


@contextmanager
def collecting(connection: Any) -> Iterator[list[Collected]]:
    """Record, instead of sending, the messages published on `connection` (held by the caller
    alone, as a pool's connection is) until the block ends; the list fills as they are made."""
    channel = connection.default_channel
    if not isinstance(channel, Channel):
        raise TypeError(f"{channel!r} cannot collect: use a connection of {__name__}.Transport")
    collected: list[Collected] = []
    channel._collected = collected
    try:
        yield collected
    finally:
        channel._collected = None


@dataclass(frozen=True)
class Refusal:
    """SQS's reason for refusing one entry of a SendMessageBatch call."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def send_collected(collected: list[Collected]) -> list[Refusal | None]:
    """Send messages of one queue, collected by `collecting`, in SendMessageBatch calls, each
    within SQS's count and size limits; for each message in order, None if SQS took it, else
    SQS's reason for refusing that entry.

    A failed call (SQS unreachable, the queue gone) raises, and the messages of calls not made
    yet are not sent: the caller treats them all as unsent.
    """
    outcome: list[Refusal | None] = []
    for chunk in _chunks(collected):
        [url] = {item.kwargs["QueueUrl"] for item in chunk}
        entries = [
            {"Id": str(index), **{k: v for k, v in item.kwargs.items() if k != "QueueUrl"}}
            for index, item in enumerate(chunk)
        ]
        answer = chunk[0].client.send_message_batch(QueueUrl=url, Entries=entries)
        failed = {entry["Id"]: entry for entry in answer.get("Failed", [])}
        for index in range(len(chunk)):
            entry = failed.get(str(index))
            outcome.append(
                None
                if entry is None
                else Refusal(str(entry.get("Code")), str(entry.get("Message", "")))
            )
    return outcome


def _chunks(collected: list[Collected]) -> list[list[Collected]]:
    """The messages in order, in runs that each fit one SendMessageBatch call."""
    chunks: list[list[Collected]] = []
    size = 0
    for item in collected:
        entry = len(str(item.kwargs.get("MessageBody", "")).encode()) + ENTRY_OVERHEAD_BYTES
        if not chunks or len(chunks[-1]) == MAX_ENTRIES or size + entry > MAX_BATCH_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += entry
    return chunks
