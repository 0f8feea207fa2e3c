"""Keeps a running job's SQS message invisible: the visibility heartbeat.

The model queues have a short base visibility timeout, so that the job of a lost worker (killed,
a spot node gone) is delivered again within about that long. While a worker holds a job, a
daemon thread extends the message's visibility every few seconds, so a long job is never
delivered twice while its worker lives. The thread dies with the process: a SIGKILLed worker
stops extending at once.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)


class VisibilityHeartbeat:
    """Context manager: from enter to exit, keep one received message invisible.

    Every `interval_s` the message is made invisible for another `visibility_s` seconds
    (ChangeMessageVisibility counts from the call). A failed beat is logged and the next beat
    tries again. After `ceiling_s` it stops extending: a hung job lets its message go, to be
    delivered again. Exit returns only after a beat in flight has landed, so a hand-back's own
    ChangeMessageVisibility made after it cannot be undone by a late beat.
    """

    def __init__(
        self,
        client: Any,
        *,
        queue_url: str,
        receipt_handle: str,
        visibility_s: int,
        interval_s: float,
        ceiling_s: float,
    ) -> None:
        self.client = client
        self.queue_url = queue_url
        self.receipt_handle = receipt_handle
        self.visibility_s = visibility_s
        self.interval_s = interval_s
        self.ceiling_s = ceiling_s
        self._stopped = threading.Event()
        # In the log context of where it was made (the job's ids): a thread starts with none.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._run,),
            name="visibility-heartbeat",
            daemon=True,
        )

    def __enter__(self) -> VisibilityHeartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        # Bounded: a beat is one call with the client's connect and read timeouts.
        self._thread.join()

    def _run(self) -> None:
        give_up_at = time.monotonic() + self.ceiling_s
        next_beat = time.monotonic() + self.interval_s
        # A beat every interval from the start; a beat that took longer is followed by the next.
        while not self._stopped.wait(max(0.0, next_beat - time.monotonic())):
            if time.monotonic() >= give_up_at:
                logger.warning(
                    "the job has run for %ss, its time limit: its message is no longer extended "
                    "and will be delivered again",
                    self.ceiling_s,
                )
                return
            self._beat()
            next_beat = max(next_beat + self.interval_s, time.monotonic())

    def _beat(self) -> None:
        try:
            self.client.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=self.receipt_handle,
                VisibilityTimeout=self.visibility_s,
            )
        except Exception as exc:  # whatever it was, the next beat tries again
            logger.warning(
                "could not extend the visibility of the running job's message (%s); "
                "trying again in %ss",
                exc,
                self.interval_s,
            )
