"""How large a micro-batch may grow: its latency budget (issue 14, item 4).

A job that joins a batch ends when the batch ends, so a batch is held to what its jobs can wait:
for each batch key (`runner.batch_key`) the worker keeps the seconds of denoising an image took
in its last run of that key (`ran`), and a batch takes in only as many images as end within
`SDSAAS_GPU_BATCH_BUDGET_S` at that rate (`room`). A key this worker never ran has no rate: its
first job runs alone and measures it. A batch that ran out of memory caps its key at half its
images (`out_of_memory`), so that the next batch of that key fits instead of failing again.

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


class BatchBudget:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._image_s: dict[Hashable, float] = {}
        self._max_images: dict[Hashable, int] = {}

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
        image_s = seconds / images
        with self._lock:
            before = self._image_s.get(key)
            self._image_s[key] = (
                image_s
                if before is None
                else NEWEST_RUN_WEIGHT * image_s + (1 - NEWEST_RUN_WEIGHT) * before
            )

    def out_of_memory(self, key: Hashable, images: int) -> None:
        """A batch of `key` of `images` ran out of memory: its batches are held to half that."""
        with self._lock:
            self._max_images[key] = min(self._max_images.get(key, images), max(1, images // 2))


# This worker's: the task that takes a batch asks it, the runner that ran it tells it.
BUDGET = BatchBudget()
