"""How large a micro-batch may grow: its latency budget (issue 14, item 4).

A job that joins a batch ends when the batch ends, so a batch is held to what its jobs can wait:
for each batch key (`runner.batch_key`) the worker keeps the seconds of denoising an image took
in its last run of that key (`ran`), and a batch takes in only as many images as end within
`SDSAAS_GPU_BATCH_BUDGET_S` at that rate (`room`). A key this worker never ran has no rate: its
first job runs alone and measures it. A batch that ran out of memory caps its key at half its
images (`out_of_memory`), so that the next batch of that key fits instead of failing again. The
cap is not for ever (memory held by another model then, fragmentation): after `CAP_LIFT_AFTER`
batches that filled it without running out, it grows by one image (additive increase,
multiplicative decrease). A batch that runs out again costs its denoising time only: its jobs run
one by one (gpu_worker/runner.py).

In-process and per worker: each GPU measures its own speed, and a restarted worker measures again.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Hashable

# The weight of the newest run in the rate: a change of speed (another GPU clock, a warm cache) is
# followed within a few runs, one slow run does not halve the batches.
NEWEST_RUN_WEIGHT = 0.5
# Batches of a key at its memory cap, all without running out, before the cap grows by one image.
CAP_LIFT_AFTER = 20


def _averaged(before: float | None, newest: float) -> float:
    """The moving average with `newest` in (the first value alone)."""
    if before is None:
        return newest
    return NEWEST_RUN_WEIGHT * newest + (1 - NEWEST_RUN_WEIGHT) * before


class BatchBudget:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._image_s: dict[Hashable, float] = {}
        self._max_images: dict[Hashable, int] = {}
        self._full_runs: dict[Hashable, int] = {}  # batches that filled the cap since it moved

    def room(self, key: Hashable, images: int, budget_s: float) -> int:
        """How many more images may join a batch of `key` that holds `images`: those that, at the
        key's last rate, end within `budget_s`; none for a key never run here."""
        with self._lock:
            image_s = self._image_s.get(key)
            cap = self._max_images.get(key, sys.maxsize)
        if image_s is None:
            return 0
        fits = math.floor(budget_s / image_s) if image_s > 0 else sys.maxsize
        return max(0, min(fits, cap) - images)

    def ran(self, key: Hashable, images: int, seconds: float) -> None:
        """A batch (or a job alone) of `key` denoised `images` in `seconds`."""
        if images < 1:
            return
        with self._lock:
            self._image_s[key] = _averaged(self._image_s.get(key), seconds / images)
            cap = self._max_images.get(key)
            if cap is None or images < cap:
                return
            self._full_runs[key] = self._full_runs.get(key, 0) + 1
            if self._full_runs[key] >= CAP_LIFT_AFTER:
                self._max_images[key], self._full_runs[key] = cap + 1, 0

    def out_of_memory(self, key: Hashable, images: int) -> None:
        """A batch of `key` of `images` ran out of memory: its batches are held to half that."""
        with self._lock:
            self._max_images[key] = min(self._max_images.get(key, images), max(1, images // 2))
            self._full_runs[key] = 0


# This worker's: the task that takes a batch asks it, the runner that ran it tells it.
BUDGET = BatchBudget()


class Takes:
    """How many messages a worker receives for a batch beyond the job it runs: its room, scaled
    by how many of those it received before joined a batch (a moving average of the fraction,
    `took`). On a queue of one kind of job every one joins and the worker takes its whole room;
    on a queue of mixed jobs few do, and it takes fewer: what does not join is held for later on
    this worker (gpu_worker/tasks.py), where an idle worker of the pool could have run it now.
    While the fraction rounds the room down to none, every PROBE_EVERY-th take still asks for
    one, to notice when the queue's jobs batch again."""

    PROBE_EVERY = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._joined = 1.0
        self._skipped = 0

    def limit(self, room: int) -> int:
        """How many to receive, for a batch with room for `room` more."""
        if room < 1:
            return 0
        with self._lock:
            limit = round(room * self._joined)
            if limit == 0:
                self._skipped += 1
                if self._skipped >= self.PROBE_EVERY:
                    self._skipped, limit = 0, 1
            return limit

    def took(self, received: int, joined: int) -> None:
        """Of `received` messages taken for a batch, `joined` ran in it."""
        if received < 1:
            return
        with self._lock:
            self._joined = _averaged(self._joined, joined / received)


# This worker's: the task asks it how many to take, and tells it how many joined.
TAKES = Takes()
