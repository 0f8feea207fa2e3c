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

A stopping worker swallowed messages (issue 9): a ReceiveMessage long poll (WaitTimeSeconds 10)
was still open on the server when Celery stopped the worker. On SIGTERM Celery only sets a flag
(celery/apps/worker.py:360); the event loop ends at its next turn (celery/worker/loops.py:117),
the task consumer is cancelled (celery/worker/consumer/tasks.py:85-89, kombu's basic_cancel),
then the hub is closed (celery/worker/components.py:83-84), which closes kombu's curl client and
with it the open request (kombu/asynchronous/http/base.py:253, curl.py:70-78). Nothing reads the
poll's answer after the loop ended; kombu would release the messages of a cancelled consumer
(kombu/transport/SQS/__init__.py:878-884), but only for an answer that is read. A poll
answered while the loop still turned, after SIGTERM, was delivered to Celery as a new task.
SQS cannot withdraw a waiting ReceiveMessage: what reaches the queue meanwhile is received
(counted in ApproximateReceiveCount) and hidden for the visibility timeout, whether or not the
connection is still there to read it (AWS documents no release on disconnect; its
ReceiveRequestAttemptId recovery of such receives exists for FIFO queues only). So:

1. once Celery's stop flag is up no new poll is opened, and the messages a poll returns are
   handed back (visibility 0, kombu's own release) instead of delivered;
2. cancelling a queue's consumer waits for that queue's open poll to answer, driving the HTTP
   client itself since the event loop has ended, and hands back what it returns. The wait ends
   at the latest `answer_margin_s` after the poll's WaitTimeSeconds ran out (13 s after the poll
   opened with the settings' 10 s): a worker that stops while idle exits within that; a busy one
   has no poll open (prefetch 1: the next poll opens only after its job is settled).

Each handed-back message has used one receive of the queue's redrive count: SQS counts every
receive, and a poll that is already waiting cannot be withdrawn.

A busy GPU worker takes its next message ahead (issue 14): under a backlog, a worker waited
after each job for its ack, kombu's next poll (scheduled for the event loop's next turn, which
sleeps up to 100 ms while no socket is open: kombu/asynchronous/hub.py, "no sockets yet") and
that poll's round trip. Now the running task calls `Channel.take_ahead` (through its delivery
info) once its job's work is done and only its report remains: a short ReceiveMessage
(WaitTimeSeconds 0; one message, or the next micro-batch: below) runs on a thread while the task
reports, and when the task has
been acked the message is delivered at once from the same callback (`_on_messages_ready`), as if
the poll had returned two. The message is held only for the job's report; a worker that stops
meanwhile hands it back at once, as it hands back a poll's answer, and so does a report that
outlasted half the message's invisibility (too little is left to run it). Taken ahead only while no
other queue of the channel has a poll open (whose answer would wait behind the backlog), and
never by an idle worker: an idle one long-polls as before.

A micro-batching GPU worker (settings.GPU_MAX_BATCH) receives more messages for the task it runs:
`Channel.take_now` receives, without waiting, up to that many of the task's queue, decoded as
Celery would get them (`Taken`); the task runs and settles those it batches, and gives the others
to `Channel.deliver_later`, which delivers them after the task, as messages taken ahead are (the
task keeps them invisible until then): the first as the next task, which takes the others with
it (`take_now`), runs those that batch with it and leaves the rest again. Under a backlog the
next batch is taken ahead whole: `take_ahead(limit)` receives up to `limit` messages in one
call, the first is delivered as the next task and the others are held for that task's
`take_now`, which returns them without a receive of its own. What the next task does not take
(it never ran: the worker stopped) is handed back at once.

A GPU task deletes its own message with its batch's (DeleteMessageBatch) once its outcome was
reported, and says so (`deleted_by_task`): Celery's ack of it then only does the channel's
bookkeeping (`basic_ack`), without a DeleteMessage of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import WorkerShutdown, WorkerTerminate
from celery.worker import state as worker_state
from kombu.asynchronous.aws.sqs.message import AsyncMessage
from kombu.transport import SQS, virtual
from vine import promise

logger = logging.getLogger(__name__)

# kombu-stubs type the public channel API only; the poll loop patched here is private to kombu.
_SqsChannel: Any = SQS.Channel
_SqsTransport: Any = SQS.Transport
_VirtualChannel: Any = virtual.Channel


# SQS's most messages a ReceiveMessage call returns.
RECEIVE_MAX = 10


class ReceiveFailed(Exception):
    """ReceiveMessage got no usable answer: endpoint unreachable, timeout or a 5xx."""


def worker_stopping() -> bool:
    """Whether this process is a Celery worker told to stop (warm or cold): it takes no work."""
    try:
        worker_state.maybe_shutdown()  # raises once Celery's signal handler set its flag
    except (WorkerShutdown, WorkerTerminate):
        return True
    return False


@dataclass(frozen=True)
class Taken:
    """A message that the running task received itself (`Channel.take_now`): its task's name
    and keyword arguments ("" and {} when it is not a task of ours), where it came from and how
    to settle it (queue URL, receipt handle), its receive count, and the message as SQS gave it."""

    task: str
    kwargs: dict[str, Any]
    queue_url: str
    receipt_handle: str
    receive_count: int
    raw: dict[str, Any] = field(repr=False)


class Channel(_SqsChannel):
    # Floor for the retry delay: with polling_interval 0 a refused connection fails at once
    # and would spin the event loop.
    min_retry_interval_s = 1.0
    # How long past its WaitTimeSeconds a stop waits for an open poll's answer (network, a busy
    # server); kombu's curl client gives up on the request at 20 s in any case.
    answer_margin_s = 3.0
    # Between two turns of the HTTP client while a stop waits for an answer.
    answer_tick_s = 0.02
    # Messages taken ahead are handed back (not left to their timeout) while at least this much
    # of their invisibility is left: a release that lands later could free another worker's.
    release_margin_s = 3.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._failed_polls: dict[str, int] = {}
        # queue -> monotonic times by which its open ReceiveMessage calls must have answered
        # (one at a time, unless a queue is consumed again before its old poll answered).
        self._open_polls: dict[str, list[float]] = {}
        self._awaiting_answer = False
        # The receive of the next messages started by `take_ahead`: (queue name, its answer).
        self._ahead: tuple[str, Future[tuple[list[dict[str, Any]], float]]] | None = None
        # Messages received with the one delivered from `_ahead`, for its task's `take_now`.
        self._held: list[dict[str, Any]] = []
        self._ahead_thread: ThreadPoolExecutor | None = None
        # Messages the running task received itself and left to run after it (`deliver_later`).
        # (queue, message, what stops the task's hold on it: its heartbeat)
        self._later: list[tuple[str, dict[str, Any], Callable[[], None]]] = []
        self._delivering: str | None = None  # the queue whose message's task runs now
        # Receipt handles of delivered messages their task deleted itself (`deleted_by_task`).
        self._deleted_by_task: set[str] = set()

    def _schedule_queue(self, queue: str) -> None:
        if queue not in self._active_queues or worker_stopping():
            return
        if not self.qos.can_consume():
            self._loop1(queue)
            return
        # on_error (called with queue, exc) ends every failure of this poll here, wherever in
        # the chain it was raised, instead of vine re-raising it into the hub (module docstring).
        done = promise(self._poll_answered, (queue,), on_error=self._poll_failed)
        deadline = time.monotonic() + self.wait_time_seconds + self.answer_margin_s
        self._open_polls.setdefault(queue, []).append(deadline)
        try:
            self._get_bulk_async(queue, callback=done)
        except Exception as exc:  # raised before the request left, e.g. resolving the queue URL
            self._poll_failed(queue, exc)

    def _poll_answered(self, queue: str, messages_fetched: int | None = None) -> None:
        self._poll_settled(queue)
        self._loop1(queue, messages_fetched)

    def _poll_settled(self, queue: str) -> None:
        deadlines = self._open_polls.get(queue)
        if deadlines:
            deadlines.pop(0)
        if not deadlines:
            self._open_polls.pop(queue, None)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        cancelled = _SqsChannel.basic_cancel(self, consumer_tag)
        if queue in self._open_polls:
            self._await_answer(queue)
        return cancelled

    def _await_answer(self, queue: str) -> None:
        """Read the answer of `queue`'s open poll, so that what it returns is handed back.

        Called once the queue's consumer is gone, when a stopping worker's event loop no longer
        runs: the HTTP client is turned here until the answer is in, or past the poll's deadline
        (WaitTimeSeconds + answer_margin_s after it opened). Every answer read meanwhile, of any
        queue, is handed back (`_on_messages_ready`): nothing is delivered from inside a cancel.
        """
        deadline = max(self._open_polls[queue])
        http = getattr(self.asynsqs(queue=self.canonical_queue_name(queue)), "_httpclient", None)
        if http is None or getattr(http, "_closed", True):
            self._open_polls.pop(queue, None)  # its request went with the client: unanswerable
            return
        self._awaiting_answer = True
        try:
            while queue in self._open_polls:
                if time.monotonic() >= deadline:
                    self._open_polls.pop(queue, None)
                    logger.warning(
                        "SQS receive on %s unanswered at stop: a message it returns stays "
                        "invisible until its visibility timeout",
                        self.canonical_queue_name(queue),
                    )
                    return
                http._timeout_check()  # reads what arrived, completes finished requests
                if queue in self._open_polls:
                    time.sleep(self.answer_tick_s)
        except Exception:
            self._open_polls.pop(queue, None)
            logger.exception("waiting for the SQS receive on %s failed", queue)
        finally:
            self._awaiting_answer = False

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
        delivered = self._deliver(queue, qname, messages.get("Messages"))
        # The solo pool ran each message's task in that call: one may have taken the next ahead.
        while self._later or self._ahead is not None:
            delivered += self._deliver_ahead()
        return delivered

    def _deliver_ahead(self) -> int:
        """Deliver the next message left for later, or else what `take_ahead` received, once the
        task's ack, which Celery leaves to the event loop's next turn (Consumer.call_soon_ack),
        has been run here. One message a call: each runs (and is acked) before the next."""
        if self._later:  # kept invisible by its heartbeat until now
            qname, message, release = self._later.pop(0)
            release()
            received = [message]
        else:
            assert self._ahead is not None
            qname, answer = self._ahead
            self._ahead = None
            received, asked_at = answer.result()
            age_s = time.monotonic() - asked_at
            if received and age_s > self.visibility_timeout / 2:
                # The task's report outlasted half of the messages' invisibility (an outage): too
                # little of it is left to run them. Still ours, they are handed back to run now,
                # here or on another worker; past their invisibility (less a margin for the
                # call) they may be another worker's, and SQS has made them visible again.
                if age_s < self.visibility_timeout - self.release_margin_s:
                    self._release_messages(self._new_queue(qname), qname, received)
                    return 0
                logger.warning(
                    "dropped %d messages of %s taken ahead %.0fs ago", len(received), qname, age_s
                )
                return 0
        if not received:
            return 0
        if self.hub is not None:
            for callback in self.hub._pop_ready():
                try:
                    callback()
                except Exception:  # as the loop's turn would have raised it; the message goes on
                    logger.exception("a ready callback of the event loop failed")
        queue = self._new_queue(qname)
        self._held = received[1:]
        try:
            return self._deliver(queue, qname, received[:1])
        finally:
            held, self._held = self._held, []
            if held:  # its task did not take them (not run: the worker stops): visible again
                self._release_messages(queue, qname, held)

    def _deliver(self, queue: str, qname: str, received: list[dict[str, Any]] | None) -> int:
        if not received:
            return 0
        if self._awaiting_answer or worker_stopping() or not self.qos.can_consume():
            # Received after the worker stopped taking work: visible again at once. (A cancelled
            # queue's answer takes the same path inside kombu: it has no callback any more.)
            self._release_messages(queue, qname, received)
            return 0
        self._delivering = qname
        try:
            return int(_SqsChannel._on_messages_ready(self, queue, qname, {"Messages": received}))
        finally:
            self._delivering = None

    def deleted_by_task(self, receipt_handle: str) -> None:
        """The running task deleted its delivered message itself: its ack sends nothing."""
        self._deleted_by_task.add(receipt_handle)

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        try:
            handle = self.qos.get(delivery_tag).delivery_info["sqs_message"]["ReceiptHandle"]
        except (KeyError, TypeError):
            handle = None
        if handle is not None and handle in self._deleted_by_task:
            self._deleted_by_task.discard(handle)
            _VirtualChannel.basic_ack(self, delivery_tag, multiple)  # the bookkeeping only
            return
        _SqsChannel.basic_ack(self, delivery_tag, multiple)

    def take_ahead(self, limit: int = 1) -> None:
        """Receive the next messages of the running task's queue, up to `limit`, on a thread now;
        the first is delivered once the task has been settled, the others are held for that
        next task's `take_now` (see the module docstring). Called by the task."""
        qname = self._delivering
        if qname is None or self._ahead is not None or self._later or worker_stopping():
            return
        if any(polls for queue, polls in self._open_polls.items() if queue != qname):
            return
        if self._ahead_thread is None:
            self._ahead_thread = ThreadPoolExecutor(1, thread_name_prefix="sqs-take-ahead")
        self._ahead = (qname, self._ahead_thread.submit(self._receive_now, qname, limit))

    def take_now(self, limit: int) -> list[Taken]:
        """Messages of the running task's queue for that task itself: a GPU worker's micro-batch
        (gpu_worker/tasks.py). Those taken ahead with its message, or else those a task before
        it left for later (their holds let go: the task holds what it keeps), all of them
        whatever `limit`; else up to `limit` that are visible now (no long poll), received now.
        The task settles those it runs, and hands the others to `deliver_later`."""
        qname = self._delivering
        if qname is None:
            return []
        received, self._held = self._held, []
        if not received and self._later:
            mine = [entry for entry in self._later if entry[0] == qname]
            self._later = [entry for entry in self._later if entry[0] != qname]
            for _, _, release in mine:
                release()
            received = [message for _, message, _ in mine]
        elif not received and limit >= 1 and not worker_stopping():
            received, _ = self._receive_now(qname, limit)
        url = self._new_queue(qname)
        return [self._taken(qname, url, raw) for raw in received]

    def _taken(self, qname: str, url: str, raw: dict[str, Any]) -> Taken:
        try:  # as kombu delivers it to Celery: its headers, and the body Celery's protocol 2 has
            message = self.Message(self._message_to_python(raw, qname, url), channel=self)
            task, (_, kwargs, _) = str(message.headers["task"]), message.decode()
        except Exception:  # not a task of ours: Celery deals with it, when it is delivered
            task, kwargs = "", {}
        count = raw.get("Attributes", {}).get("ApproximateReceiveCount", "1")
        return Taken(task, kwargs, url, raw["ReceiptHandle"], int(count), raw)

    def deliver_later(self, taken: list[tuple[Taken, Callable[[], None]]]) -> None:
        """Deliver these messages of `take_now`, in order, once the running task was settled,
        each with what keeps it invisible until then (called just before it is delivered or
        handed back: a heartbeat's stop)."""
        qname = self._delivering
        assert qname is not None or not taken, "deliver_later outside a delivery"
        self._later.extend((str(qname), item.raw, release) for item, release in taken)

    def _receive_now(self, qname: str, limit: int = 1) -> tuple[list[dict[str, Any]], float]:
        """At most `limit` messages of `qname` that are visible now (no long poll), and when they
        were asked for; none on failure: the event loop's next poll receives what this did not."""
        attributes, asked_at = self.get_message_attributes, time.monotonic()
        try:
            answer = self.sqs(queue=qname).receive_message(
                QueueUrl=self._new_queue(qname),
                MaxNumberOfMessages=min(limit, RECEIVE_MAX),
                WaitTimeSeconds=0,
                MessageSystemAttributeNames=attributes["MessageSystemAttributeNames"],
                **(
                    {"MessageAttributeNames": names}
                    if (names := attributes["MessageAttributeNames"])
                    else {}
                ),
            )
        except Exception as exc:
            logger.warning("SQS receive ahead on %s failed: %r", qname, exc)
            return [], asked_at
        received: list[dict[str, Any]] = answer.get("Messages") or []
        for message in received:  # as kombu's own synchronous receive decodes them (_get_bulk)
            message["Body"] = AsyncMessage(body=message["Body"]).decode()
        return received, asked_at

    def close(self) -> None:
        """Hand back what is held for later (a consumer restarted, a worker stopping)."""
        later, self._later = self._later, []
        for qname, message, release in later:
            release()
            self._release_messages(self._new_queue(qname), qname, [message])
        if self._ahead_thread is not None:
            self._ahead_thread.shutdown(wait=False)
        _SqsChannel.close(self)

    def _poll_failed(self, queue: str, exc: BaseException) -> None:
        self._poll_settled(queue)
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
