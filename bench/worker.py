"""`python -m bench.worker` (`make bench`): one GPU worker under a backlog, against plain diffusers.

A fresh local stack in a temporary folder (bench/stack.py: moto_server, migrations, the API under
gunicorn, the control worker; no beat), ONE GPU worker process as `make run` starts it (Celery,
solo pool, the tiny model's queue; one CPU thread; --loglevel INFO for its job lines) and beside
it the baseline, a plain diffusers loop on the same model folder (bench/diffusers_loop.py), one
CPU thread too, loaded once. With two cores or more the worker and the baseline get CPU 0 and
every other process (the stack, this one) the others (`--no-pin` mixes them): the worker stands
for a GPU host, whose control plane and SQS/S3 run elsewhere.

Figures, medians over `--repeats`, the two sides alternating (ABBA):

- backlog_ratio: images/s of the worker with `--jobs` jobs queued over images/s of the baseline
  loop making as many images of the same input (64x64, 2 steps, Euler, guidance 7.5, one image
  a job, the seeds in turn). The jobs go through the HTTP API while the worker is held
  (SIGSTOP), so all are queued when it resumes; one job more is sent than measured, and the
  worker's rate runs from the end of that first job to the end of the last, so the resume is
  not counted. The baseline's rate is its loop alone (the pipeline loaded before).
- gap_ms_p50: from one job's end to the next one's start on the worker under that backlog, from
  the worker's log (`Task gpu.generate[…] succeeded` to the next `job … attempt` line): the
  ack, the next receive and the message's decode. The worker runs up to `--max-batch` (its
  SDSAAS_GPU_MAX_BATCH, by default the worker's default) waiting jobs as one micro-batch, within
  its latency budget (the warm-up job measures the shape): a batch is one task, its jobs end
  together, the gap is between tasks, and the profile gives each job its share of its batch.
- idle_queue_ms_p95: the worker idle (long-polling an empty queue), `--idle-jobs` jobs sent one
  at a time after a random pause: from the job row's `created_at` to the job's start in the
  worker's log. `idle_started_ms_p95` runs to the row's `started_at` instead (stamped by the
  control worker when it applies the worker's `started` event).

Also a profile of one job (medians, ms): the worker's own metrics (load, inference, encode,
upload), the rest of its task (events, cancel check, heartbeat thread) and the gap, beside the
baseline's time per image. Prints a table, then one JSON line last; exits 1 if a job fails.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import worker_log
from bench.diffusers_loop import PROMPT
from bench.stack import (
    ONE_THREAD,
    TINY_MODEL,
    Home,
    stack_env,
    start_control_plane,
    use_env,
    wait_api,
)
from bench.stats import percentile
from sdsaas import devstack

GUIDANCE = 7.5
# (jobs, repeats, idle jobs) of each mode; flags override them.
MODES = {"quick": (32, 5, 15), "default": (48, 9, 30)}
GOALS = {"backlog_ratio": 0.9, "gap_ms_p50": 20.0, "idle_queue_ms_p95": 100.0}
WORK_METRICS = ("load_s", "inference_s", "encode_s", "upload_s")
# A micro-batch's time in each of its jobs' metrics: loaded and run as one, uploaded at once.
BATCH_METRICS = ("load_s", "inference_s", "upload_s")
# The profile's parts of one job on the worker, in the order of its run.
PROFILE_LABELS = {
    "task": "task",
    "load": "= load",
    "inference": "+ inference",
    "encode": "+ encode",
    "upload": "+ upload",
    "task_other": "+ the rest (events, cancel check, threads)",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats: `make bench`")
    parser.add_argument("--jobs", type=int, help="jobs measured per backlog (N)")
    parser.add_argument("--repeats", type=int, help="backlog runs of each side")
    parser.add_argument("--idle-jobs", type=int, help="jobs sent to the idle worker")
    parser.add_argument("--size", type=int, default=64, help="width and height")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--no-pin", action="store_true", help="no CPU of its own for the worker")
    parser.add_argument(
        "--max-batch",
        type=int,
        help="the worker's SDSAAS_GPU_MAX_BATCH (default: the worker's own, 8)",
    )
    parser.add_argument("--seed", type=int, default=5, help="of the idle pauses")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    args.mode = "quick" if args.quick else "default"
    jobs, repeats, idle_jobs = MODES[args.mode]
    args.jobs = args.jobs or jobs
    args.repeats = args.repeats or repeats
    args.idle_jobs = args.idle_jobs or idle_jobs
    if (
        min(
            args.jobs, args.repeats, args.idle_jobs, 1 if args.max_batch is None else args.max_batch
        )
        < 1
    ):
        parser.error("--jobs, --repeats, --idle-jobs and --max-batch take 1 or more")
    return args


# --- the processes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cpus:
    """Where the worker and the baseline run (`device`), and everything else (`rest`)."""

    device: set[int] | None = None
    rest: set[int] | None = None

    @classmethod
    def plan(cls, *, pin: bool) -> Cpus:
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2:
            return cls()
        return cls({cpus[0]}, set(cpus[1:]))


@contextmanager
def on_cpus(cpus: set[int] | None) -> Iterator[None]:
    """The processes started inside run on `cpus` (a child inherits its parent's affinity)."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class Run:
    """One job on the worker, as its log tells (times are time.time())."""

    job: str
    start: float
    attempt: int = 1
    end: float | None = None
    outcome: str = ""


@dataclass
class Worker:
    """The one GPU worker process and what its log tells so far."""

    stack: devstack.Stack
    name: str = "gpu"
    offset: int = 0
    ready: bool = False
    max_batch: int | None = None  # None: the worker's default
    runs: dict[str, Run] = field(default_factory=dict)  # by job id: its last run
    current: list[Run] = field(default_factory=list)  # the running task's: its job, its batch

    def start(self) -> None:
        env = dict(ONE_THREAD)
        if self.max_batch is not None:
            env["SDSAAS_GPU_MAX_BATCH"] = str(self.max_batch)
        devstack.start_gpu_worker(
            self.stack, name=self.name, node=self.name, env=env, loglevel="INFO"
        )

    @property
    def pid(self) -> int:
        return next(process.pid for name, process in self.stack.processes if name == self.name)

    def read(self) -> None:
        entries, self.offset = worker_log.read_new(
            self.stack.logs / f"{self.name}.log", self.offset
        )
        for entry in entries:
            if entry.kind == "ready":
                self.ready = True
            elif entry.kind == "start":
                self.runs[entry.job] = Run(entry.job, entry.at, entry.attempt)
                self.current = [self.runs[entry.job]]
            elif entry.kind == "batch" and self.current:
                # The batch's jobs start with the task; their attempts are not in the log.
                for job in entry.batch:
                    self.runs[job] = Run(job, self.current[0].start)
                    self.current.append(self.runs[job])
            elif entry.kind == "end":
                for run in self.current:
                    run.end, run.outcome = entry.at, entry.outcome
                self.current = []

    def is_ready(self) -> bool:
        self.read()
        return self.ready

    def ended(self, jobs: list[str]) -> bool:
        self.read()
        return all(job in self.runs and self.runs[job].end is not None for job in jobs)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Stopped (SIGSTOP) inside: what is sent meanwhile waits in its queue."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)


class Baseline:
    """The plain diffusers loop (bench/diffusers_loop.py) in a process of its own."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], logs: Path) -> None:
        argv = [sys.executable, "-m", "bench.diffusers_loop", "--model", str(TINY_MODEL)]
        argv += ["--width", str(args.size), "--height", str(args.size), "--steps", str(args.steps)]
        argv += ["--guidance", str(GUIDANCE), "--prompt", PROMPT]
        self.log = logs / "baseline.log"
        self.process = subprocess.Popen(
            argv,
            cwd=devstack.ROOT,
            env={**env, **ONE_THREAD},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log.open("wb"),
            text=True,
        )
        print(f"  started baseline        pid {self.process.pid:<7} log {self.log}")

    def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the baseline loop ended: see {self.log}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, images: int, seed: int) -> float:
        """Seconds the loop took to make `images` images."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{images} {seed}\n")
        self.process.stdin.flush()
        return float(self.answer()["seconds"])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, stack: Any) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        stack.check_alive()
        if time.monotonic() > deadline:
            raise SystemExit(f"no {what} within {timeout:.0f}s: see the logs in {stack.logs}")
        time.sleep(0.02)


# --- the measurements ---------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    home: Home
    stack: devstack.Stack
    worker: Worker
    baseline: Baseline
    key: str
    sdsaas_rates: list[float] = field(default_factory=list)  # images/s, one a repeat
    baseline_rates: list[float] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)  # between tasks (a batch is one task)
    batch_sizes: list[float] = field(default_factory=list)  # of each measured job's task
    profile: dict[str, list[float]] = field(default_factory=dict)  # ms, one a measured job
    idle_queue_ms: list[float] = field(default_factory=list)
    idle_started_ms: list[float] = field(default_factory=list)

    def body(self, seed: int) -> dict[str, Any]:
        size, steps = self.args.size, self.args.steps
        return {
            "model": "tiny",
            "prompt": PROMPT,
            "width": size,
            "height": size,
            "steps": steps,
            "guidance": GUIDANCE,
            "scheduler": "euler",
            "num_outputs": 1,
            "seed": seed,
        }

    def submit(self, seed: int) -> str:
        job = devstack.api("POST", f"{self.home.base}/v1/jobs", self.key, self.body(seed))
        return str(job["id"])

    def finish(self, jobs: list[str], timeout: float) -> dict[str, Any]:
        """Waits for the jobs to end on the worker and in the database; their rows by id."""
        from jobs.models import Job

        wait_until(lambda: self.worker.ended(jobs), timeout, "end of the jobs", self.stack)

        def rows() -> dict[str, Any]:
            return {job.public_id: job for job in Job.objects.filter(public_id__in=jobs)}

        wait_until(lambda: all(j.is_final for j in rows().values()), 30, "final rows", self.stack)
        found = rows()
        bad = [
            f"{row.public_id} {row.status} {row.error_code}".strip()
            for row in found.values()
            if row.status != Job.Status.SUCCEEDED
        ]
        bad += [
            f"{job} {self.worker.runs[job].outcome} on the worker"
            for job in jobs
            if self.worker.runs[job].outcome != "succeeded"
        ]
        if bad:
            raise SystemExit(f"jobs did not succeed: {', '.join(bad[:5])}; see {self.stack.logs}")
        return found

    def warm_up(self) -> None:
        """The model loaded in both (the first job and the first image of each, not measured)."""
        self.finish([self.submit(0)], timeout=180)
        self.baseline.run(2, 0)

    def sdsaas_backlog(self, seed: int) -> float:
        """images/s of the worker through `--jobs` jobs queued ahead of it."""
        with self.worker.held():
            jobs = [self.submit(seed + i) for i in range(self.args.jobs + 1)]
        rows = self.finish(jobs, timeout=60 + 5 * len(jobs))
        runs = [self.worker.runs[job] for job in jobs]
        # A task runs one job, or a batch of them (--max-batch): its jobs share start and end.
        tasks = sorted({(run.start, run.end) for run in runs if run.end is not None})
        for (_, before_end), (after_start, _) in itertools.pairwise(tasks):
            assert before_end is not None
            self.gaps_ms.append(1000 * (after_start - before_end))
        if len(tasks) < 2:
            raise SystemExit("the backlog ran as one batch: send more jobs than --max-batch")
        first_end, last_end = tasks[0][1], tasks[-1][1]
        assert first_end is not None and last_end is not None
        measured = [run for run in runs if run.end is not None and run.end > first_end]
        for run in measured:  # the first task ends where the measurement starts
            assert run.end is not None
            metrics = rows[run.job].metrics
            batch_size = float(metrics.get("batch_size", 1.0))
            self.batch_sizes.append(batch_size)
            # Each job's share: its batch's load, inference and uploads, its own encode.
            task_ms = 1000 * (run.end - run.start) / batch_size
            work = {name: 1000 * float(metrics.get(name, 0.0)) for name in WORK_METRICS}
            for name in BATCH_METRICS:
                work[name] /= batch_size
            for name, value in [*work.items(), ("task", task_ms)]:
                self.profile.setdefault(name.removesuffix("_s"), []).append(value)
            self.profile.setdefault("task_other", []).append(task_ms - sum(work.values()))
        return len(measured) / (last_end - first_end)

    def baseline_loop(self, seed: int) -> float:
        seconds = self.baseline.run(self.args.jobs, seed)
        self.profile.setdefault("baseline_image", []).append(1000 * seconds / self.args.jobs)
        return self.args.jobs / seconds

    def backlog(self) -> None:
        for repeat in range(self.args.repeats):
            seed = 1000 * (repeat + 1)
            sides = ["sdsaas", "baseline"] if repeat % 2 == 0 else ["baseline", "sdsaas"]
            for side in sides:
                if side == "sdsaas":
                    self.sdsaas_rates.append(self.sdsaas_backlog(seed))
                else:
                    self.baseline_rates.append(self.baseline_loop(seed))
            sdsaas, baseline = self.sdsaas_rates[-1], self.baseline_rates[-1]
            print(
                f"  backlog {repeat + 1}/{self.args.repeats} ({'/'.join(sides)}): sdsaas"
                f" {sdsaas:.2f} images/s, baseline {baseline:.2f}, ratio {sdsaas / baseline:.3f}"
            )

    def idle(self, rng: random.Random) -> None:
        """Jobs one at a time, each sent to a worker that waits on an empty queue."""
        for i in range(self.args.idle_jobs):
            time.sleep(rng.uniform(0.3, 1.2))  # its long poll open for a while, not just begun
            job = self.submit(100 + i)
            row = self.finish([job], timeout=60)[job]
            created = row.created_at.timestamp()
            self.idle_queue_ms.append(1000 * (self.worker.runs[job].start - created))
            if row.started_at is not None:
                self.idle_started_ms.append(1000 * (row.started_at.timestamp() - created))
        queue = percentile(self.idle_queue_ms, 50)
        print(f"  idle: {self.args.idle_jobs} jobs, created -> start on the worker p50 {queue} ms")


# --- the report ---------------------------------------------------------------------------------


def ratios(bench: Bench) -> list[float]:
    return [a / b for a, b in zip(bench.sdsaas_rates, bench.baseline_rates, strict=True)]


def summarize(bench: Bench, *, cpus: Cpus, wall_s: float) -> dict[str, Any]:
    args = bench.args
    summary: dict[str, Any] = {
        "backlog_ratio": round(statistics.median(ratios(bench)), 3),
        "gap_ms_p50": percentile(bench.gaps_ms, 50, 1),
        "idle_queue_ms_p95": percentile(bench.idle_queue_ms, 95, 1),
        "sdsaas_images_per_s": round(statistics.median(bench.sdsaas_rates), 3),
        "baseline_images_per_s": round(statistics.median(bench.baseline_rates), 3),
        "gap_ms_p95": percentile(bench.gaps_ms, 95, 1),
        "gap_ms_mean": round(statistics.fmean(bench.gaps_ms), 1),
        # Receives beyond one per job (a job's last run's attempt - 1): none on a healthy run; a
        # message taken ahead and handed back, or hidden and received again, would count here.
        # (A batch's other jobs are not counted: the log does not tell their attempts.)
        "extra_receives": sum(run.attempt - 1 for run in bench.worker.runs.values()),
        "idle_queue_ms_p50": percentile(bench.idle_queue_ms, 50, 1),
        "idle_started_ms_p95": percentile(bench.idle_started_ms, 95, 1),
        "ratio_per_repeat": [round(r, 3) for r in ratios(bench)],
        "sdsaas_images_per_s_per_repeat": [round(r, 3) for r in bench.sdsaas_rates],
        "baseline_images_per_s_per_repeat": [round(r, 3) for r in bench.baseline_rates],
        "profile_ms_p50": {
            name: percentile(values, 50, 1) for name, values in sorted(bench.profile.items())
        },
        "batch_size_mean": round(statistics.fmean(bench.batch_sizes), 2),
        "max_batch": args.max_batch,
        "jobs": args.jobs,
        "repeats": args.repeats,
        "idle_jobs": args.idle_jobs,
        "size": args.size,
        "steps": args.steps,
        "threads": 1,
        "cores": os.cpu_count(),
        "pinned": cpus.device is not None,
        "mode": args.mode,
        "gap_source": "worker log: task end -> next job start",
        "idle_queue_source": "job row created_at -> worker log job start",
        "wall_s": round(wall_s, 1),
    }
    summary["goals_met"] = {
        "backlog_ratio": summary["backlog_ratio"] >= GOALS["backlog_ratio"],
        "gap_ms_p50": summary["gap_ms_p50"] <= GOALS["gap_ms_p50"],
        "idle_queue_ms_p95": summary["idle_queue_ms_p95"] < GOALS["idle_queue_ms_p95"],
    }
    return summary


def print_table(summary: dict[str, Any]) -> None:
    met = summary["goals_met"]
    rows = [
        (
            "backlog images/s",
            f"{summary['sdsaas_images_per_s']:.2f}",
            f"{summary['baseline_images_per_s']:.2f}",
            f"{summary['backlog_ratio']:.3f}",
            f">= {GOALS['backlog_ratio']}",
            met["backlog_ratio"],
        ),
        ("gap ms, p50", f"{summary['gap_ms_p50']}", "-", "-", "<= 20", met["gap_ms_p50"]),
        (
            "idle queue ms, p95",
            f"{summary['idle_queue_ms_p95']}",
            "-",
            "-",
            "< 100",
            met["idle_queue_ms_p95"],
        ),
    ]
    print()
    print(f"{'figure':<20} {'sdsaas':>9} {'baseline':>9} {'ratio':>7}  {'goal':<8} met?")
    for name, sdsaas, baseline, ratio, goal, ok in rows:
        print(f"{name:<20} {sdsaas:>9} {baseline:>9} {ratio:>7}  {goal:<8} {'yes' if ok else 'NO'}")
    profile = summary["profile_ms_p50"]
    parts = [f"{label} {profile.get(name)}" for name, label in PROFILE_LABELS.items()]
    print()
    print(f"one image, ms (p50): baseline loop {profile.get('baseline_image')};")
    gap = f"p50 {summary['gap_ms_p50']}, mean {summary['gap_ms_mean']}"
    print(f"  the worker: {', '.join(parts)}, then the gap ({gap})")
    print(
        f"N={summary['jobs']} jobs x {summary['repeats']} repeats,"
        f" {summary['idle_jobs']} idle jobs, {summary['size']}px {summary['steps']} steps,"
        f" 1 thread, {summary['cores']} cores, pinned: {summary['pinned']},"
        f" max batch {summary['max_batch'] or 'the default'} (mean {summary['batch_size_mean']})"
    )


# --- the run ------------------------------------------------------------------------------------


def create_tenant(jobs: int) -> str:
    """A tenant whose plan queues the whole backlog at once (no admission wait): its API key."""
    from tenants.models import Plan
    from tenants.services import api_key_issue, tenant_create

    name = f"bench-{int(time.time())}-{os.getpid()}"
    plan = Plan.objects.create(
        name=name,
        monthly_credits=1_000_000,
        max_concurrent_jobs=jobs + 1,
        requests_per_minute=100_000,
    )
    return api_key_issue(tenant=tenant_create(name=name, plan=plan), name="bench")[1]


def main() -> int:
    args = parse_args()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    began = time.monotonic()
    home = Home.create("bench")
    env, database = stack_env(home, prefix="bench")
    use_env(env)
    stack = devstack.Stack(env, home.logs)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cpus = Cpus.plan(pin=not args.no_pin)
    print(f"sdsaas worker bench ({args.mode}; database: {database}); logs in {home.path}")
    ok, baseline = False, None
    try:
        with on_cpus(cpus.rest):
            start_control_plane(stack, home, scheduler=False)
            key = create_tenant(args.jobs)
            worker = Worker(stack, max_batch=args.max_batch)
            with on_cpus(cpus.device):
                worker.start()
                baseline = Baseline(args, env, home.logs)
            wait_api(stack, home)
            print(f"  baseline loaded in {baseline.answer()['load_s']}s")
            wait_until(worker.is_ready, 120, "worker ready", stack)
            bench = Bench(args, home, stack, worker, baseline, key)
            bench.warm_up()
            bench.backlog()
            bench.idle(random.Random(args.seed))
        summary = summarize(bench, cpus=cpus, wall_s=time.monotonic() - began)
        print_table(summary)
        print(json.dumps(summary))
        ok = True
        return 0
    finally:
        if baseline is not None:
            baseline.close()
        # Nothing of this stack outlives the run: killed, not stopped, since the warm shutdown
        # of an idle worker waits out its open long poll (up to 13 s).
        for name, _ in list(stack.processes):
            stack.kill(name)
        if ok and not args.keep:
            home.remove()


if __name__ == "__main__":
    sys.exit(main())
