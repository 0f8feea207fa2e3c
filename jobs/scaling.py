"""How many GPU workers a model's pool needs: the one scaling policy.

The production publisher (`jobs/services/scaling.py`), the simulator (`bench/scaling_sim.py`)
and the local stack's worker pools (`sdsaas/devstack.py`) all decide with this module, so what
the simulator measures is what runs. It is pure: no Django, no AWS, times in seconds.

The policy, per model:

- **Work** is every job a worker must still start or finish: messages visible in the model's
  queue, messages in flight (a worker runs them, holds them ahead, or they await redelivery), and
  jobs admitted but not yet published. Queue depth alone would drop the jobs being run, and a
  scale-in on it stops busy workers.
- **Workers needed** = ceil(work / target backlog per worker), where the target backlog per
  worker = acceptable queue wait / measured seconds per job: the number of jobs one worker clears
  within the wait a client accepts. Never less than one worker while there is work.
- **Scale out at once, scale in after a delay**: the pool grows to the need as soon as it is
  seen; workers above the need go once it stayed below the pool's size for the scale-in delay.
- **A model in use keeps one warm worker**: the pool keeps one worker until it had no work for
  the keep-alive, then goes to zero. A model with a trickle of jobs (one every few minutes)
  would otherwise start an instance for nearly every job, each waiting out its boot and model
  load, which costs more GPU time than the idle worker (bench/scaling_sim.py, bench/README.md).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backlog:
    """A model's work at one moment."""

    visible: int  # waiting in the model's queue
    in_flight: int  # received and not deleted: run, held ahead, or awaiting redelivery
    unpublished: int  # admitted, not yet in the queue

    @property
    def jobs(self) -> int:
        return self.visible + self.in_flight + self.unpublished


@dataclass(frozen=True)
class ScalingPolicy:
    """The knobs (settings.SCALING_*), the same for every model of a deployment."""

    acceptable_wait_s: float  # a job should start within this long of its admission
    default_seconds_per_job: float  # until a model has measured jobs
    keep_alive_s: float  # a pool keeps one worker until it had no work for this long
    scale_in_delay_s: float  # workers above the need go once it stayed below for this long
    max_workers: int  # per model

    def target_backlog_per_worker(self, seconds_per_job: float) -> float:
        """Jobs one worker clears within the acceptable wait: at least the one it runs."""
        return max(1.0, self.acceptable_wait_s / max(seconds_per_job, 1e-3))

    def workers_needed(self, backlog: Backlog, *, seconds_per_job: float) -> int:
        if backlog.jobs <= 0:
            return 0
        workers = math.ceil(backlog.jobs / self.target_backlog_per_worker(seconds_per_job))
        return min(self.max_workers, max(1, workers))

    def next_pool(self, pool: PoolState, *, needed: int, now: float) -> PoolState:
        """The pool's size after seeing `needed` at `now`: up at once, down after the delay.

        The scale-in delay restarts each time the need reaches the pool's size (or the pool
        shrinks); once it ran out, the pool shrinks to the need, but not below one worker until
        the keep-alive since the last work ran out. The delay holds workers above one only: the
        last one goes when the keep-alive ends, not a delay later.
        """
        warm_until = now + self.keep_alive_s if needed > 0 else pool.warm_until
        if needed >= pool.workers:
            return PoolState(needed, hold_until=now + self.scale_in_delay_s, warm_until=warm_until)
        if now < pool.hold_until and pool.workers > 1:
            return PoolState(pool.workers, hold_until=pool.hold_until, warm_until=warm_until)
        workers = max(needed, 1 if now < warm_until else 0)
        hold_until = pool.hold_until if workers == pool.workers else now + self.scale_in_delay_s
        return PoolState(workers, hold_until=hold_until, warm_until=warm_until)


@dataclass(frozen=True)
class PoolState:
    """The size the policy last chose for a model's pool, and until when it holds it."""

    workers: int = 0
    hold_until: float = 0.0  # no scale-in before
    warm_until: float = 0.0  # one worker kept until (the last work + the keep-alive)


def seconds_per_job(recent: Iterable[float], *, default: float) -> float:
    """A model's seconds per job from its recent jobs' run times (the median; `default` with
    none): a few slow outliers (a cold load) do not double the pool."""
    samples = [s for s in recent if s > 0]
    return statistics.median(samples) if samples else default
