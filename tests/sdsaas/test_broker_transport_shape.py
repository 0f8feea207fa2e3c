"""kombu's private SQS internals that sdsaas/broker/transport.py overrides keep their shape.

The transport replaces three private methods of kombu's SQS channel, wraps its basic_cancel, its
close and a private callback of its async connection, turns kombu's curl client itself while a
stopping worker waits for an open poll, and runs the event loop's ready callbacks before it
delivers a message taken ahead (the module docstring says why). pyproject.toml holds kombu to the
minor version this was written against; this test fails loudly when even a patch release changes
any of them. When it does: read the new kombu code, check whether the bug is fixed upstream (then
drop the override) or re-fit the override, and update the digests below in the same commit.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import kombu
import pytest
from celery.worker import state as worker_state
from celery.worker.consumer.consumer import Consumer
from kombu.asynchronous.aws.connection import AsyncAWSQueryConnection, AsyncConnection
from kombu.asynchronous.http.curl import CurlClient
from kombu.asynchronous.hub import Hub
from kombu.transport import SQS
from kombu.transport.virtual import base as virtual

from sdsaas.broker import transport as sqs_transport

# sha256 (first 16 hex digits) of the source of each kombu method we replace or wrap.
REPLACED_SOURCE_DIGESTS: dict[str, tuple[Callable[..., Any], str]] = {
    "Channel._schedule_queue": (SQS.Channel._schedule_queue, "953f1ad1314ec406"),
    "Channel._on_messages_ready": (SQS.Channel._on_messages_ready, "c947764eea946906"),
    "Channel.asynsqs": (SQS.Channel.asynsqs, "66a72c972d149f1b"),
    "Channel.basic_cancel": (SQS.Channel.basic_cancel, "9bdcc2fe60e3b029"),
    "Channel.close": (SQS.Channel.close, "7be659a7c7697a2c"),
    "AsyncAWSQueryConnection._on_list_ready": (
        AsyncAWSQueryConnection._on_list_ready,
        "a04054ae42c0cb21",
    ),
}

# sha256 (first 16 hex digits) of the source of private code whose behaviour, not only its
# signature, the stop path relies on: the cancel drops the queue's callback; the release makes
# messages visible at once (VisibilityTimeout 0); _timeout_check reads the sockets and completes
# finished requests without the event loop; close() sets _closed; the connection keeps its HTTP
# client in _httpclient; Celery's maybe_shutdown raises once a stop was asked for.
RELIED_ON_SOURCE_DIGESTS: dict[str, tuple[Callable[..., Any], str]] = {
    "virtual.Channel.basic_cancel": (virtual.Channel.basic_cancel, "1beb5cf96c9a2cb4"),
    "Channel._release_messages": (SQS.Channel._release_messages, "93f733a8bd26e7fe"),
    "CurlClient._timeout_check": (CurlClient._timeout_check, "fdc710d430540736"),
    "CurlClient.close": (CurlClient.close, "c2d0e89c9ba5092d"),
    "AsyncConnection.__init__": (AsyncConnection.__init__, "43272305a6e21e53"),
    "celery.worker.state.maybe_shutdown": (worker_state.maybe_shutdown, "e15d0ed41e2cd309"),
    # Taking the next message ahead: Celery leaves the ack of a task to the event loop's next
    # turn, whose ready callbacks the channel runs itself before it delivers; a message received
    # ahead is decoded as kombu's synchronous receive decodes it, with the attributes it asks for.
    "celery Consumer.call_soon_ack": (Consumer.call_soon_ack, "39f8579d076243fc"),
    "Hub._pop_ready": (Hub._pop_ready, "22df33da92f84b97"),
    "Channel._get_bulk": (SQS.Channel._get_bulk, "bfafc08017df203d"),
    "Channel.get_message_attributes": (
        SQS.Channel.get_message_attributes.fget,
        "8fc910dfa6010e7a",
    ),
}

# Signatures of the private methods the override calls.
CALLED_SIGNATURES: dict[str, tuple[Callable[..., Any], str]] = {
    "Channel._loop1": (SQS.Channel._loop1, "(self, queue, messages_fetched=None)"),
    "Channel._get_bulk_async": (SQS.Channel._get_bulk_async, "(self, queue, callback=None)"),
    "Channel.canonical_queue_name": (SQS.Channel.canonical_queue_name, "(self, queue_name)"),
    "Channel._new_queue": (SQS.Channel._new_queue, "(self, queue, **kwargs)"),
    "Channel._message_to_python": (
        SQS.Channel._message_to_python,
        "(self, message, queue_name, q_url)",
    ),
    "Channel.sqs": (SQS.Channel.sqs, "(self, queue=None)"),
    "Channel._release_messages": (
        SQS.Channel._release_messages,
        "(self, queue, qname, messages)",
    ),
    "Channel._on_messages_ready": (
        SQS.Channel._on_messages_ready,
        "(self, queue, qname, messages)",
    ),
    "AsyncAWSQueryConnection._on_list_ready": (
        AsyncAWSQueryConnection._on_list_ready,
        "(self, parent, markers, operation, response)",
    ),
}


def _digest(func: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16]


def test_kombu_is_the_minor_version_the_transport_was_written_against() -> None:
    assert kombu.__version__.startswith("5.7."), (
        f"kombu {kombu.__version__}: sdsaas/broker/transport.py was written against 5.7; "
        "re-check its overrides before moving the pin in pyproject.toml"
    )


@pytest.mark.parametrize("name", sorted(REPLACED_SOURCE_DIGESTS))
def test_replaced_kombu_method_is_unchanged(name: str) -> None:
    func, expected = REPLACED_SOURCE_DIGESTS[name]
    assert _digest(func) == expected, (
        f"kombu's {name} changed (kombu {kombu.__version__}); sdsaas/broker/transport.py replaces "
        "it: re-read both before updating the digest"
    )


@pytest.mark.parametrize("name", sorted(RELIED_ON_SOURCE_DIGESTS))
def test_relied_on_private_code_is_unchanged(name: str) -> None:
    func, expected = RELIED_ON_SOURCE_DIGESTS[name]
    assert _digest(func) == expected, (
        f"{name} changed (kombu {kombu.__version__}); sdsaas/broker/transport.py relies on what "
        "it does (its stop path, taking a message ahead): re-read both before updating the digest"
    )


@pytest.mark.parametrize("name", sorted(CALLED_SIGNATURES))
def test_called_kombu_method_keeps_its_signature(name: str) -> None:
    func, expected = CALLED_SIGNATURES[name]
    assert str(inspect.signature(func)) == expected, (
        f"kombu's {name} changed its signature (kombu {kombu.__version__}); "
        "sdsaas/broker/transport.py calls it"
    )


def test_transport_still_subclasses_kombus_sqs_channel() -> None:
    assert issubclass(sqs_transport.Channel, SQS.Channel)
    assert issubclass(sqs_transport.Transport, SQS.Transport)
