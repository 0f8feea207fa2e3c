"""`make soak`: the chaos soak. Jobs through the real API while busy GPU workers are SIGKILLed.

A fresh local stack in a temporary folder (sdsaas.devstack's pieces: moto_server, the API under
gunicorn, the control worker, beat with its sweeps, GPU workers on the tiny model's queue), on a
SQLite file of its own, or on the database at DATABASE_URL when that is set (CI's Postgres; the
soak's tenants are new ones, and only they are checked). Several tenants submit their jobs
through the HTTP API at once; admission holds each to its concurrency cap. The queues' base
visibility timeout is short (`--visibility`), as the GPU workers' heartbeat allows.

The chaos: every `--kill-every` seconds (jittered by +-50 %), the next GPU worker seen in the
middle of a job (its log shows `job <id> attempt <n>` and not yet the task's end; the database
shows the job in flight) gets SIGKILL, as a lost spot node does, and a fresh process takes its
place at once. No job is killed twice: a job killed on each of its SQS_MAX_RECEIVES deliveries
fails `worker_lost` by design, which is the poison path, not this soak's. So every job must end
`succeeded`; any other end counts as `failed`. The chaos stops when `--calm-tail` or fewer jobs
are left (or after `--max-run` seconds, which bounds the run); the rest then finish undisturbed,
and a job still not final once `--drain` seconds went by without any job finishing counts as
`lost` (a stall, not a slow machine).

Checks at the end, per job and per tenant: the job's usage records equal the images it produced,
it reached a final state once (`double_metered` counts the jobs that fail either), and each
tenant's credit periods show `used` equal to its images and nothing left `reserved`.

Times of a killed job, from its SIGKILL: `recovery` to the job's completion as the API shows it
(`completed_at`, stamped when the control worker applies the worker's event); `redelivery` to
the next delivery's start on a worker, and `gpu_recovery` to the end of the run that finished
it (both from the workers' logs). `event_lag`: from a job's end on its worker to `completed_at`.
`extra_deliveries`: deliveries that no kill explains (attempt - 1 - kills of the job);
`double_runs`: jobs that ran on two workers at once.

Prints progress, a table, and one JSON line last; exits 1 on any loss, failure, double metering
or credit mismatch. GPU workers run one CPU thread each (each stands for one GPU).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdsaas import devstack

# Celery's log lines: `[2026-01-31 12:00:00,123: INFO/MainProcess] job job_… attempt 2` when the
# GPU task takes a job, `Task gpu.generate[<id>] succeeded in …` (raised, retry…) when it ends,
# `gpu-a@host ready.` when the worker (re)starts (a watchdog restart execs in the same process).
LOG_LINE = re.compile(
    r"^\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]*\] "
    r"(?:job (?P<job>job_\w+) attempt (?P<attempt>\d+)|(?P<ready>\S+ ready\.$)"
    r"|Task gpu\.generate\[[^\]]+\] (?!received))",
    re.MULTILINE,
)
FINAL = ("succeeded", "failed", "canceled")


@dataclass
class Run:
    """One delivery of a job, as its worker's log tells it (times are time.time())."""

    job: str
    attempt: int
    process: str
    start: float
    end: float | None = None  # the task's end; None while it runs, or for good once killed
    killed_at: float | None = None


@dataclass
class Kill:
    run: Run
    at: float  # time.time() of the SIGKILL


@dataclass
class Slot:
    """One GPU worker position: the process in it is killed and replaced, again and again."""

    name: str
    env: dict[str, str]
    runs: list[Run]  # every slot's runs, shared
    incarnation: int = 0
    offset: int = 0
    current: Run | None = None
    started_at: float = 0.0
    ready: bool = False
    boot_s: list[float] = field(default_factory=list)

    @property
    def process(self) -> str:
        return f"{self.name}.{self.incarnation}"

    def start(self, stack: devstack.Stack) -> None:
        self.incarnation += 1
        self.offset, self.current, self.ready = 0, None, False
        self.started_at = time.monotonic()
        devstack.start_gpu_worker(
            stack, name=self.process, node=self.name, env=self.env, loglevel="INFO"
        )

    def read_log(self, logs: Path) -> None:
        """What the worker logged since the last read: the runs it began and ended, readiness."""
        try:
            with (logs / f"{self.process}.log").open("rb") as log:
                log.seek(self.offset)
                chunk = log.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1  # whole lines only
        self.offset += end
        text = chunk[:end].decode(errors="replace")
        for match in LOG_LINE.finditer(text):
            at = dt.datetime.strptime(match.group("at"), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if match.group("job"):
                attempt = int(match.group("attempt"))
                self.current = Run(match.group("job"), attempt, self.process, at)
                self.runs.append(self.current)
            elif match.group("ready"):
                self.current = None  # a run cut short by a restart has no end
                if not self.ready:
                    self.ready = True
                    self.boot_s.append(time.monotonic() - self.started_at)
            elif self.current is not None:
                self.current.end, self.current = at, None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return round(ordered[rank - 1], 2)


def span(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="GPU worker processes")
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2, help="each tenant's cap")
    parser.add_argument("--visibility", type=int, default=10, help="base visibility timeout, s")
    parser.add_argument("--kill-every", type=float, default=10.0, help="mean s between kills")
    parser.add_argument("--steps", default="20-40", help="denoising steps per job, a range")
    parser.add_argument("--outputs", default="1-2", help="images per job, a range")
    parser.add_argument("--size", type=int, default=384, help="width and height")
    parser.add_argument("--calm-tail", type=int, default=4, help="jobs left when chaos stops")
    parser.add_argument("--max-run", type=float, default=540, help="chaos stops after this, s")
    parser.add_argument(
        "--drain", type=float, default=150, help="after chaos: s with no job finishing = lost"
    )
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    rng = random.Random(args.seed)
    home = Path(tempfile.mkdtemp(prefix="sdsaas-soak-"))
    logs = home / "logs"
    logs.mkdir()
    aws_port, api_port = free_port(), free_port()
    base = f"http://127.0.0.1:{api_port}"
    env = {
        **devstack.local_env(aws=f"http://127.0.0.1:{aws_port}", base=base),
        "SDSAAS_SQS_QUEUE_PREFIX": "soak",
        "SDSAAS_SQS_VISIBILITY_TIMEOUT": str(args.visibility),
        "SDSAAS_MODEL_CACHE_DIR": str(home / "model-cache"),
    }
    database = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "own SQLite file"
    env.setdefault("DATABASE_URL", f"sqlite:///{home / 'soak.sqlite3'}")
    # This process reads the database with the stack's settings (the chaos, the final checks).
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "sdsaas.settings"
    stack = devstack.Stack(env, logs)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"sdsaas chaos soak (database: {database}); logs in {home}, kept unless it passes")
    ok = False
    try:
        devstack.start_aws(stack, port=aws_port)
        devstack.prepare_database(stack, tiny=devstack.ROOT / "var" / "models" / "tiny")
        import django

        django.setup()
        keys = create_tenants(args)
        devstack.start_api(stack, port=api_port)
        devstack.start_control_worker(stack)
        devstack.start_scheduler(stack, schedule=home / "celerybeat-schedule")
        # One CPU thread per worker: each stands for one GPU, and two workers with a thread per
        # core each fight over the cores (a 512x512 job took 20x longer in a trial).
        one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        runs: list[Run] = []
        slots = [Slot(f"gpu-{chr(97 + i)}", one_thread, runs) for i in range(args.workers)]
        for slot in slots:
            slot.start(stack)
        devstack.wait_http(f"{base}/healthz", 90, stack)
        result = soak(args, rng, stack, slots, keys, base)
        ok = report(result)
        return 0 if ok else 1
    finally:
        stack.stop()
        if ok and not args.keep:
            shutil.rmtree(home, ignore_errors=True)


def create_tenants(args: argparse.Namespace) -> dict[str, str]:
    """Tenants of this run, on a plan that never refuses the soak: its key per tenant name."""
    from tenants.models import Plan
    from tenants.services import api_key_issue, tenant_create

    run = f"soak-{int(time.time())}-{os.getpid()}"
    plan = Plan.objects.create(
        name=run,
        monthly_credits=args.jobs * span(args.outputs)[1] * 2,
        max_concurrent_jobs=args.concurrency,
        requests_per_minute=100_000,
        max_steps=max(50, span(args.steps)[1]),
    )
    keys = {}
    for i in range(args.tenants):
        tenant = tenant_create(name=f"{run}-t{i}", plan=plan)
        keys[tenant.name] = api_key_issue(tenant=tenant, name="soak")[1]
    return keys


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
    from jobs.models import Job

    tenants = list(keys)
    started, began = time.time(), time.monotonic()
    thread, submitted, errors = submitter(args, rng, keys, base)
    print(f"{args.jobs} jobs from {len(tenants)} tenants; a kill every ~{args.kill_every}s")
    kills: list[Kill] = []
    killed: set[str] = set()
    next_kill = began + args.kill_every
    chaos_until: float | None = None
    finals, last_final_at = 0, began
    next_note = began + 15
    while True:
        stack.check_alive()
        now = time.monotonic()
        rows = {
            row["public_id"]: row
            for row in Job.objects.filter(tenant__name__in=tenants).values(
                "public_id", "status", "attempt"
            )
        }
        left = sum(1 for row in rows.values() if row["status"] not in FINAL)
        if len(rows) - left > finals:
            finals, last_final_at = len(rows) - left, now
        for slot in slots:
            slot.read_log(stack.logs)
        if chaos_until is None and now >= next_kill:
            busy = [slot for slot in slots if mid_job(slot, rows, killed)]
            if busy:
                slot = rng.choice(busy)
                run = slot.current
                assert run is not None
                stack.kill(slot.process)
                run.killed_at = time.time()
                kills.append(Kill(run, run.killed_at))
                killed.add(run.job)
                print(
                    f"  kill {len(kills):>3}: {run.process} held {run.job} attempt {run.attempt}"
                    f" for {run.killed_at - run.start:.1f}s"
                )
                slot.start(stack)
                next_kill = now + args.kill_every * rng.uniform(0.5, 1.5)
        if now >= next_note:
            print(f"  {now - began:5.0f}s: {finals}/{args.jobs} final, {len(kills)} kills")
            next_note = now + 15
        done_submitting = not thread.is_alive()
        if done_submitting and rows and left == 0 and len(rows) == len(submitted):
            break
        calm = left <= args.calm_tail or now - began > args.max_run
        if chaos_until is None and done_submitting and calm:
            chaos_until = now
            print(f"  {now - began:5.0f}s: chaos stops with {left} jobs left")
        # Lost: still not final after `drain` seconds in which no job finished, chaos over.
        if chaos_until is not None and now - max(chaos_until, last_final_at) > args.drain:
            break
        time.sleep(0.5)
    for slot in slots:
        slot.read_log(stack.logs)
    end = time.monotonic()
    return Result(
        args=args,
        submitted=dict(submitted),
        submit_errors=list(errors),
        kills=kills,
        slots=slots,
        started=started,
        wall_s=end - began,
        chaos_s=(chaos_until or end) - began,
    )


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


def report(result: Result) -> bool:
    """Prints the table and the JSON line; True when nothing was lost or metered wrong."""
    from django.db.models import Count, Sum

    from jobs.models import Job, JobEvent
    from tenants.models import CreditPeriod, UsageRecord

    args = result.args
    jobs = {
        job.public_id: job
        for job in Job.objects.select_related("tenant").filter(public_id__in=result.submitted)
    }
    ids = [job.pk for job in jobs.values()]
    usage = Counter(
        dict(
            UsageRecord.objects.filter(job_id__in=ids)
            .values_list("job__public_id")
            .annotate(n=Count("id"))
        )
    )
    finals = Counter(
        dict(
            JobEvent.objects.filter(job_id__in=ids, kind__in=FINAL)
            .values_list("job__public_id")
            .annotate(n=Count("id"))
        )
    )
    succeeded = [job for job in jobs.values() if job.status == Job.Status.SUCCEEDED]
    lost = [job for job in jobs.values() if job.status not in FINAL]
    failed = Counter(
        f"{job.status}:{job.error_code}"
        for job in jobs.values()
        if job.status in FINAL and job.status != Job.Status.SUCCEEDED
    )
    images = {
        public_id: len(job.output_keys) if job.status == Job.Status.SUCCEEDED else 0
        for public_id, job in jobs.items()
    }
    double_metered = [
        public_id
        for public_id in jobs
        if usage[public_id] > images[public_id] or finals[public_id] > 1
    ]
    unmetered = [public_id for public_id in jobs if usage[public_id] < images[public_id]]
    credit_mismatch: list[str] = []
    tenant_rows = []
    for tenant in sorted(set(result.submitted.values())):
        periods = CreditPeriod.objects.filter(tenant__name=tenant).aggregate(
            used=Sum("used"), reserved=Sum("reserved")
        )
        mine = [job for job in jobs.values() if job.tenant.name == tenant]
        produced = sum(images[job.public_id] for job in mine)
        if (periods["used"] or 0) != produced or (periods["reserved"] or 0) != 0:
            credit_mismatch.append(tenant)
        last = max((job.completed_at.timestamp() for job in mine if job.completed_at), default=0)
        used, reserved = periods["used"], periods["reserved"]
        tenant_rows.append((tenant, len(mine), produced, used, reserved, last))

    runs_of: dict[str, list[Run]] = defaultdict(list)
    for run in result.slots[0].runs:
        runs_of[run.job].append(run)
    recovery, redelivery, gpu_recovery = [], [], []
    for kill in result.kills:
        job = jobs[kill.run.job]
        if job.status == Job.Status.SUCCEEDED and job.completed_at:
            recovery.append(job.completed_at.timestamp() - kill.at)
        later = [run for run in runs_of[job.public_id] if run.attempt > kill.run.attempt]
        if later:
            redelivery.append(min(run.start for run in later) - kill.at)
        ends = [run.end for run in later if run.end is not None]
        if ends:
            gpu_recovery.append(max(ends) - kill.at)
    event_lag = []
    for job in succeeded:
        ends = [run.end for run in runs_of[job.public_id] if run.end is not None]
        if ends and job.completed_at:
            event_lag.append(job.completed_at.timestamp() - max(ends))
    double_runs = 0
    for runs in runs_of.values():
        ordered = sorted(runs, key=lambda run: run.start)
        for before, after in itertools.pairwise(ordered):
            gone = before.end or before.killed_at or float("inf")
            if after.start < gone:
                double_runs += 1
                break
    kills_of = Counter(kill.run.job for kill in result.kills)
    extra = sum(max(0, job.attempt - 1 - kills_of[job.public_id]) for job in jobs.values())
    # The worker's own clock for the attempt that succeeded: load, inference, encode, upload.
    work_s = [
        sum(float(job.metrics.get(k, 0)) for k in ("load_s", "inference_s", "encode_s", "upload_s"))
        for job in succeeded
        if "inference_s" in job.metrics
    ]
    boot_s = [s for slot in result.slots for s in slot.boot_s]
    completions = [job.completed_at.timestamp() for job in succeeded if job.completed_at]
    minutes = (max(completions) - result.started) / 60 if completions else 0.0

    summary: dict[str, Any] = {
        "jobs": len(jobs),
        "submit_errors": len(result.submit_errors),
        "succeeded": len(succeeded),
        "failed": sum(failed.values()),
        "lost": len(lost),
        "double_metered": len(double_metered),
        "unmetered": len(unmetered),
        "credit_mismatch_tenants": len(credit_mismatch),
        "images": sum(images.values()),
        "kills": len(result.kills),
        "extra_deliveries": extra,
        "double_runs": double_runs,
        "recovery_p50_s": percentile(recovery, 50),
        "recovery_p90_s": percentile(recovery, 90),
        "recovery_max_s": percentile(recovery, 100),
        "redelivery_p50_s": percentile(redelivery, 50),
        "redelivery_max_s": percentile(redelivery, 100),
        "gpu_recovery_p50_s": percentile(gpu_recovery, 50),
        "gpu_recovery_max_s": percentile(gpu_recovery, 100),
        "event_lag_p50_s": percentile(event_lag, 50),
        "event_lag_max_s": percentile(event_lag, 100),
        "visibility_s": args.visibility,
        "job_work_p50_s": percentile(work_s, 50),
        "job_work_p90_s": percentile(work_s, 90),
        "worker_boot_p50_s": percentile(boot_s, 50),
        "jobs_per_min": round(len(succeeded) / minutes, 1) if minutes else 0.0,
        "workers": args.workers,
        "tenants": args.tenants,
        "chaos_s": round(result.chaos_s, 1),
        "wall_s": round(result.wall_s, 1),
    }
    print()
    print(f"{'metric':<28} value")
    print(f"{'-' * 28} {'-' * 12}")
    for name, value in summary.items():
        print(f"{name:<28} {value}")
    print()
    print(f"{'tenant':<32} {'jobs':>5} {'images':>6} {'used':>6} {'rsvd':>5} {'last done':>9}")
    for tenant, count, produced, used, reserved, last in tenant_rows:
        done = f"+{last - result.started:.0f}s" if last else "-"
        print(f"{tenant:<32} {count:>5} {produced:>6} {used!s:>6} {reserved!s:>5} {done:>9}")
    problems = [
        *(f"submit failed: {error}" for error in result.submit_errors[:5]),
        *(f"not final in time: {job.public_id} ({job.status})" for job in lost[:10]),
        *(f"ended {what}: {n} job(s)" for what, n in failed.items()),
        *(f"metered more than once: {public_id}" for public_id in double_metered[:10]),
        *(f"metered less than produced: {public_id}" for public_id in unmetered[:10]),
        *(f"credits do not add up: {tenant}" for tenant in credit_mismatch),
    ]
    if problems:
        print()
        for problem in problems:
            print(f"FAIL {problem}")
    print(json.dumps(summary))
    return not problems and len(jobs) == args.jobs


if __name__ == "__main__":
    sys.exit(main())
