"""A daemon thread of this process that handles what is put to it, in order, off the caller's path.

Used where a caller must not wait on the network but the work must still be done soon and in
order: an API process publishing the jobs it admitted (jobs/services/dispatch.py), a GPU worker
sending a job's interim events (gpu_worker/events.py). What is in hand when the process dies is
lost, so each user says what covers that loss.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _nothing() -> None:
    return None


class BackgroundBatches(Generic[T]):
    """`handle` gets, on the thread, everything put since its last call (a batch, in order).

    The thread starts on first use in the process that uses it (a forked child starts its own and
    drops what its parent held). `after_batch` runs on the thread after each batch, `at_stop`
    once when `stop` ends it.
    """

    def __init__(
        self,
        name: str,
        handle: Callable[[list[T]], None],
        *,
        after_batch: Callable[[], None] = _nothing,
        at_stop: Callable[[], None] = _nothing,
    ) -> None:
        self._name = name
        self._handle = handle
        self._after_batch = after_batch
        self._at_stop = at_stop
        self._forget_parent()
        # A forked child (a gunicorn worker) starts empty: what the parent held is the parent's,
        # and a lock the parent's thread held at the fork would never be released in the child.
        os.register_at_fork(after_in_child=self._forget_parent)

    def _forget_parent(self) -> None:
        # One entry a `put`: what is handed over together is handled together.
        self._items: queue.SimpleQueue[tuple[T, ...] | None] = queue.SimpleQueue()
        self._pending = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def put(self, items: Iterable[T]) -> None:
        items = list(items)
        with self._changed:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._pending += len(items)
        self._items.put(tuple(items))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything put so far was handled (or failed); whether it was in time."""
        with self._changed:
            return self._changed.wait_for(lambda: self._pending == 0, timeout=timeout)

    def stop(self, timeout: float) -> None:
        """Handle what was put, then end the thread."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._items.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._items.get()]
            while not self._items.empty():
                batch.append(self._items.get_nowait())
            items = [item for entry in batch if entry is not None for item in entry]
            try:
                if items:
                    self._handle(items)
            except Exception:
                logger.exception("%s: a batch of %d failed", self._name, len(items))
            finally:
                with self._changed:
                    self._pending -= len(items)
                    self._changed.notify_all()
            if None in batch:  # stopped
                self._at_stop()
                return
            self._after_batch()
