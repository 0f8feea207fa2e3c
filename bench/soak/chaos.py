"""The soak itself: every job submitted through the API while busy GPU workers are SIGKILLed,
until each job is final (or stalls)."""

from __future__ import annotations

import argparse
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bench.soak.stack import span
from bench.soak.workers import Kill, Slot
from sdsaas import devstack

FINAL = ("succeeded", "failed", "canceled")


def submitter(
    args: argparse.Namespace, rng: random.Random, keys: dict[str, str], base: str
) -> tuple[threading.Thread, dict[str, str], list[str]]:
    """Submits every job through the API from a few threads, tenants interleaved."""
    submitted: dict[str, str] = {}
    errors: list[str] = []
    tenants = list(keys)
    bodies = [
        (
            tenants[i % len(tenants)],
            {
                "model": "tiny",
                "prompt": f"soak job {i}: a lighthouse in a storm",
                "width": args.size,
                "height": args.size,
                "steps": rng.randint(*span(args.steps)),
                "num_outputs": rng.randint(*span(args.outputs)),
                "scheduler": "euler",
                "seed": i,
            },
        )
        for i in range(args.jobs)
    ]

    def submit(item: tuple[str, dict[str, Any]]) -> None:
        tenant, body = item
        try:
            job = devstack.api("POST", f"{base}/v1/jobs", keys[tenant], body)
        except SystemExit as exc:  # devstack.api ends a run with one line; here it is counted
            errors.append(str(exc))
            return
        submitted[job["id"]] = tenant

    def run() -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(submit, bodies))

    thread = threading.Thread(target=run, name="submit", daemon=True)
    thread.start()
    return thread, submitted, errors


@dataclass
class Result:
    args: argparse.Namespace
    submitted: dict[str, str]  # job id -> tenant name
    submit_errors: list[str]
    kills: list[Kill]
    slots: list[Slot]
    started: float  # time.time() of the first submit
    wall_s: float
    chaos_s: float


def soak(
    args: argparse.Namespace,
    rng: random.Random,
    stack: devstack.Stack,
    slots: list[Slot],
    keys: dict[str, str],
    base: str,
) -> Result:
    tenants = list(keys)
    started, began = time.time(), time.monotonic()
    thread, submitted, errors = submitter(args, rng, keys, base)
    print(f"{args.jobs} jobs from {len(tenants)} tenants; a kill every ~{args.kill_every}s")
    chaos = Chaos(args, rng, stack, slots, began=began)
    while True:
        stack.check_alive()
        now = time.monotonic()
        rows = job_rows(tenants)
        left = chaos.observe(rows, now)
        chaos.kill_when_due(rows, now)
        chaos.note_progress(now)
        done_submitting = not thread.is_alive()
        if done_submitting and rows and left == 0 and len(rows) == len(submitted):
            break
        chaos.calm_when_due(left, now, done_submitting=done_submitting)
        if chaos.stalled(now):
            break
        time.sleep(0.5)
    for slot in slots:
        slot.read_log(stack.logs)
    end = time.monotonic()
    return Result(
        args=args,
        submitted=dict(submitted),
        submit_errors=list(errors),
        kills=chaos.kills,
        slots=slots,
        started=started,
        wall_s=end - began,
        chaos_s=(chaos.chaos_until or end) - began,
    )


def job_rows(tenants: list[str]) -> dict[str, dict[str, Any]]:
    """Each of the soak's jobs known to the database: its status and attempt, by public id."""
    from jobs.models import Job

    return {
        row["public_id"]: row
        for row in Job.objects.filter(tenant__name__in=tenants).values(
            "public_id", "status", "attempt"
        )
    }


@dataclass
class Chaos:
    """The soak loop's state from one poll to the next (times are time.monotonic())."""

    args: argparse.Namespace
    rng: random.Random
    stack: devstack.Stack
    slots: list[Slot]
    began: float
    kills: list[Kill] = field(default_factory=list)
    killed: set[str] = field(default_factory=set)  # the jobs killed once: never again
    finals: int = 0
    chaos_until: float | None = None  # when the chaos stopped; None while it goes on
    next_kill: float = field(init=False)
    last_final_at: float = field(init=False)
    next_note: float = field(init=False)

    def __post_init__(self) -> None:
        self.next_kill = self.began + self.args.kill_every
        self.last_final_at = self.began
        self.next_note = self.began + 15

    def observe(self, rows: dict[str, Any], now: float) -> int:
        """Notes whether a job became final and reads the workers' logs; the jobs left."""
        left = sum(1 for row in rows.values() if row["status"] not in FINAL)
        if len(rows) - left > self.finals:
            self.finals, self.last_final_at = len(rows) - left, now
        for slot in self.slots:
            slot.read_log(self.stack.logs)
        return left

    def kill_when_due(self, rows: dict[str, Any], now: float) -> None:
        """Once a kill is due, SIGKILLs a worker seen in the middle of a job, if any is."""
        if self.chaos_until is not None or now < self.next_kill:
            return
        busy = [slot for slot in self.slots if mid_job(slot, rows, self.killed)]
        if busy:
            self.kill(self.rng.choice(busy))
            self.next_kill = now + self.args.kill_every * self.rng.uniform(0.5, 1.5)

    def kill(self, slot: Slot) -> None:
        """SIGKILL the slot's worker in the middle of its job; a fresh one takes its place."""
        run = slot.current
        assert run is not None
        self.stack.kill(slot.process)
        run.killed_at = time.time()
        self.kills.append(Kill(run, run.killed_at))
        self.killed.add(run.job)
        print(
            f"  kill {len(self.kills):>3}: {run.process} held {run.job} attempt {run.attempt}"
            f" for {run.killed_at - run.start:.1f}s"
        )
        slot.start(self.stack)

    def note_progress(self, now: float) -> None:
        if now >= self.next_note:
            finals, kills = self.finals, len(self.kills)
            print(f"  {now - self.began:5.0f}s: {finals}/{self.args.jobs} final, {kills} kills")
            self.next_note = now + 15

    def calm_when_due(self, left: int, now: float, *, done_submitting: bool) -> None:
        """The chaos stops once all is submitted and few jobs are left (or it ran long enough)."""
        calm = left <= self.args.calm_tail or now - self.began > self.args.max_run
        if self.chaos_until is None and done_submitting and calm:
            self.chaos_until = now
            print(f"  {now - self.began:5.0f}s: chaos stops with {left} jobs left")

    def stalled(self, now: float) -> bool:
        """Lost: still not final after `drain` seconds in which no job finished, chaos over."""
        if self.chaos_until is None:
            return False
        return now - max(self.chaos_until, self.last_final_at) > self.args.drain


def mid_job(slot: Slot, rows: dict[str, Any], killed: set[str]) -> bool:
    """The slot's worker runs a job (its log), not final, not killed before (the database)."""
    run = slot.current
    if run is None:
        return False
    row = rows.get(run.job)
    # The database may not know of this delivery yet: the control worker applies events later.
    return (
        row is not None
        and run.job not in killed
        and row["status"] not in FINAL
        and row["attempt"] <= run.attempt
    )
