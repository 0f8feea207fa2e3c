"""A process's background thread (sdsaas/background.py): in order, in batches, and a forked
child (a gunicorn worker) starts empty instead of waiting on its parent's work."""

from __future__ import annotations

import os
import threading

from sdsaas.background import BackgroundBatches


def test_what_is_put_is_handled_in_order_in_batches_of_what_arrived_meanwhile() -> None:
    # given a thread whose first batch is held until three more items arrived
    handled: list[list[int]] = []
    entered, first = threading.Event(), threading.Event()

    def handle(batch: list[int]) -> None:
        if not handled:
            entered.set()
            assert first.wait(10)
        handled.append(batch)

    thread = BackgroundBatches("test-batches", handle)
    thread.put([1])
    assert entered.wait(10)
    thread.put([2, 3])
    thread.put([4])
    first.set()
    # when it is flushed, then every item was handled once, in order: the first alone, the
    # others, which arrived while it was handled, together
    assert thread.flush(timeout=10)
    assert handled == [[1], [2, 3, 4]]
    thread.stop(timeout=10)


def test_a_forked_child_starts_empty_and_has_its_own_thread() -> None:
    # given a parent whose thread holds work it has not finished
    release = threading.Event()
    handled: list[str] = []

    def handle(batch: list[str]) -> None:
        if "parent" in batch:
            assert release.wait(10)
        handled.extend(batch)

    thread = BackgroundBatches("test-fork", handle)
    thread.put(["parent"])
    # when the process forks, then the child neither waits on the parent's work nor loses its
    # own: its flush returns at once, and what it puts is handled by a thread of its own
    pid = os.fork()
    if pid == 0:
        ok = thread.flush(timeout=2)
        thread.put(["child"])
        ok = ok and thread.flush(timeout=10) and handled == ["child"]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    release.set()
    assert os.waitstatus_to_exitcode(status) == 0
    assert thread.flush(timeout=10) and handled == ["parent"]
    thread.stop(timeout=10)
