"""kombu's SQS transport with a poll loop that survives an unreachable endpoint.

Selected by ``CELERY_BROKER_TRANSPORT`` in settings; the broker URL stays ``sqs://``.

Why this exists (kombu 5.7.0, celery 5.7.0): a worker consumes SQS through a chain of promises
on the event loop: ``_schedule_queue`` -> async ReceiveMessage -> ``_on_messages_ready`` ->
``_loop1``, which schedules the next ``_schedule_queue``. When the endpoint is lost:

1. pycurl reports the failed request as HTTP 599, and
   ``AsyncAWSQueryConnection._on_list_ready`` (kombu/asynchronous/aws/connection.py:243-250)
   answers ``[]`` for 599/5xx/408/504 "to prevent hanging the worker" (celery/kombu#1173);
2. ``Channel._on_messages_ready`` (kombu/transport/SQS/__init__.py:874) then calls
   ``messages.get("Messages")`` on that list: ``AttributeError``;
3. the ``_loop1`` promise has no ``on_error``, so vine re-raises. From a socket callback (a
   long poll cut mid-flight) the error leaves the hub and Celery stops the worker with
   "Unrecoverable error" (it is not a connection error, so the consumer is not restarted). From
   a timer callback (a request refused at connect time) ``Hub.fire_timers`` logs "Error in
   timer" and swallows it. Either way ``_loop1`` never runs again: the worker is alive, the
   queue fills up, nothing is consumed. Upstream reports: celery/celery#8243, celery/kombu#931,
   celery/kombu#1127.

The fix keeps the loop going: a failed or unanswered receive is logged and the queue is polled
again after the polling interval, so consumption resumes as soon as the endpoint answers. No
reconnect is needed: every SQS call is a fresh HTTP request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kombu.transport import SQS
from vine import promise

logger = logging.getLogger(__name__)

# kombu-stubs type the public channel API only; the poll loop patched here is private to kombu.
_SqsChannel: Any = SQS.Channel
_SqsTransport: Any = SQS.Transport


class ReceiveFailed(Exception):
    """ReceiveMessage got no usable answer: endpoint unreachable, timeout or a 5xx."""


class Channel(_SqsChannel):
    # Floor for the retry delay: with polling_interval 0 a refused connection fails at once
    # and would spin the event loop.
    min_retry_interval_s = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._failed_polls: dict[str, int] = {}

    def _schedule_queue(self, queue: str) -> None:
        if queue not in self._active_queues:
            return
        if not self.qos.can_consume():
            self._loop1(queue)
            return
        # on_error (called with queue, exc) ends every failure of this poll here, wherever in
        # the chain it was raised, instead of vine re-raising it into the hub (module docstring).
        done = promise(self._loop1, (queue,), on_error=self._poll_failed)
        try:
            self._get_bulk_async(queue, callback=done)
        except Exception as exc:  # raised before the request left, e.g. resolving the queue URL
            self._poll_failed(queue, exc)

    def asynsqs(self, queue: str | None = None) -> Any:
        connection = _SqsChannel.asynsqs(self, queue=queue)
        if not getattr(connection, "_sdsaas_guarded", False):
            # kombu raises for any other status (403, a queue deleted under us: 400) in a callback
            # whose error handler vine drops; answered as "no answer", it reaches _poll_failed.
            answer = connection._on_list_ready

            def on_list_ready(*args: Any) -> Any:
                try:
                    return answer(*args)
                except Exception as exc:
                    logger.warning("SQS answered a receive with an error: %r", exc)
                    return []

            connection._on_list_ready = on_list_ready
            connection._sdsaas_guarded = True
        return connection

    def _on_messages_ready(self, queue: str, qname: str, messages: Any) -> int:
        if not isinstance(messages, Mapping):
            # kombu's stand-in for "no answer" (step 1 of the module docstring).
            raise ReceiveFailed(f"ReceiveMessage on {qname} got no answer (599, timeout or 5xx)")
        failed = self._failed_polls.pop(qname, 0)
        if failed:
            logger.warning("SQS receive on %s works again after %d failed polls", qname, failed)
        return int(_SqsChannel._on_messages_ready(self, queue, qname, messages))

    def _poll_failed(self, queue: str, exc: BaseException) -> None:
        qname = self.canonical_queue_name(queue)
        failed = self._failed_polls[qname] = self._failed_polls.get(qname, 0) + 1
        delay = max(float(self.connection.polling_interval or 0), self.min_retry_interval_s)
        # Once per outage at warning level: a lost endpoint fails every poll.
        log = logger.warning if failed == 1 else logger.debug
        log(
            "SQS receive on %s failed (%r); polling again every %.1fs until it answers",
            qname,
            exc,
            delay,
            exc_info=not isinstance(exc, ReceiveFailed),
        )
        if self.hub is not None and not self.closed:
            self.hub.call_later(delay, self._schedule_queue, queue)


class Transport(_SqsTransport):
    Channel = Channel
