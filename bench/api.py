"""`python -m bench.api` (`make bench`): the API's submit and poll against a bare DRF baseline.

On PostgreSQL only (DATABASE_URL; by default `postgres://postgres@127.0.0.1:5432/bench_api`).
A database that does not exist is created, migrated and dropped at the end; one that exists is
migrated and kept. moto_server (SQS: a submit publishes its job after commit) and two gunicorns
with sdsaas/gunicorn_conf.py, `--workers` sync workers each, DEBUG off as deployed:

- sdsaas: the API (`sdsaas.wsgi`, the project's settings);
- baseline: the same settings and middleware with bench/api_baseline's URLs: a DRF view that
  authenticates the key as the API does and INSERTs one job row, and one that SELECTs a job row.

Figures, from `--clients` concurrent connections, the two sides alternating (ABBA) over `--rounds`
rounds of `--requests` requests each, after a warm-up round of each:

- submit: `POST /v1/jobs` req/s of each side; `submit_ratio` the median of the rounds' ratios
  (sdsaas / baseline); latency percentiles of all measured requests of each side.
- poll: `GET /v1/jobs/{id}` over a fixed set of admitted jobs; `poll_ratio` likewise.

The jobs go to a model of their own that no GPU worker consumes (bench/api_drain.py keeps its
queue near-empty), from tenants on a plan the benchmark cannot exhaust (credits, rate limit,
concurrency); after each submit round of sdsaas its tenants' admitted jobs are marked canceled,
so that admission counts what a tenant's in-flight jobs would be. CPU time per request of each
part of the stack (bench/api_cpu.py). Then a profile of single submits in this process (SQL
statements, the publish to SQS; bench/api_profile.py). A table, then one JSON line last.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
import psutil
import psycopg
from psycopg import sql

from bench.api_cpu import CpuMeter, database_backends, tree
from bench.api_load import Request, Round, run_round
from bench.api_profile import profile_submits
from bench.stack import Home, stack_env, use_env
from bench.stats import percentile
from sdsaas import devstack

DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/bench_api"
# (requests per round and side, rounds) of each mode; flags override them.
MODES = {"quick": (200, 3), "default": (600, 5)}
GOALS = {"submit_ratio": 0.6, "submit_p99_ms": 100.0, "poll_ratio": 0.85}
POLL_JOBS = 50
# The parts of the stack whose CPU time is measured per request (bench/api_cpu.py): the side's
# gunicorn (master and workers), the database's backends, moto_server with the drain, the client.
CPU = ("api", "postgres", "sqs", "client")
BODY = {"model": "", "prompt": "a lighthouse at dusk, oil on canvas"}
# DEBUG off, as deployed (query logging off); what settings then require, for loopback http.
SERVED = {
    "SDSAAS_DEBUG": "0",
    "SDSAAS_SECRET_KEY": "bench-only-secret-key",
    "SDSAAS_SSL_REDIRECT": "0",
    "SDSAAS_WEBHOOK_SECRET_KEYS": "ZGV2LW9ubHktaW5zZWN1cmUtd2ViaG9vay1rZXktMDA=",
    "SDSAAS_DISCORD_TOKEN_KEYS": "ZGV2LW9ubHktaW5zZWN1cmUtZGlzY29yZC1rZXktMDA=",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds: `make bench`")
    parser.add_argument("--requests", type=int, help="requests per round and side")
    parser.add_argument("--rounds", type=int, help="measured rounds of each side and figure")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers per side")
    parser.add_argument(
        "--tenants", type=int, default=1, help="sdsaas's submits from this many tenants in turn"
    )
    parser.add_argument("--profile-submits", type=int, default=30, help="single submits profiled")
    parser.add_argument("--cprofile", type=Path, help="write cProfile stats of those submits here")
    parser.add_argument("--debug", action="store_true", help="serve with SDSAAS_DEBUG=1")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    args.mode = "quick" if args.quick else "default"
    requests, rounds = MODES[args.mode]
    args.requests = args.requests or requests
    args.rounds = args.rounds or rounds
    counts = (args.requests, args.rounds, args.clients, args.workers, args.tenants)
    if min(*counts, args.profile_submits) < 1:
        parser.error(
            "--requests, --rounds, --clients, --workers, --tenants and --profile-submits "
            "take 1 or more"
        )
    return args


# --- the database -------------------------------------------------------------------------------


def database_url() -> str:
    url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE
    if "postgresql" not in str(dj_database_url.parse(url).get("ENGINE", "")):
        raise SystemExit(f"bench.api runs on PostgreSQL only; DATABASE_URL is {url.split(':')[0]}")
    return url


def _server(url: str) -> tuple[str, str]:
    """The database's name, and the URL of the server's maintenance database."""
    parts = urlsplit(url)
    return parts.path.lstrip("/"), parts._replace(path="/postgres").geturl()


def database_create(url: str) -> bool:
    """Create the database unless it exists; whether it was created (and is the bench's)."""
    name, admin = _server(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


def database_drop(url: str) -> None:
    from django.apps import apps
    from django.db import connections

    if apps.ready:  # this process's publisher thread holds a connection of its own
        from jobs.services.dispatch import background_publisher

        background_publisher().stop(timeout=5)
    connections.close_all()
    name, admin = _server(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# --- the stack ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixtures:
    model: str  # the slug of the model no worker consumes
    submit_tenants: tuple[int, ...]
    submit_keys: tuple[str, ...]  # sdsaas's submits, each tenant in turn
    baseline_key: str  # the baseline's submits (its rows are never admitted)
    poll_key: str  # both sides' polls, of these jobs
    poll_jobs: tuple[str, ...]


def create_fixtures(submit_tenants: int) -> Fixtures:
    """The run's model, plan and tenants, and the admitted jobs that the polls read."""
    from jobs.models import DiffusionModel, Family
    from jobs.services.submit import job_submit
    from tenants.models import Plan
    from tenants.services import api_key_issue, tenant_create

    run = f"bench-api-{int(time.time())}-{os.getpid()}"
    # Never the limit: 10^9 credits and requests a minute, 10^6 jobs in flight.
    plan = Plan.objects.create(
        name=run, monthly_credits=10**9, requests_per_minute=10**9, max_concurrent_jobs=10**6
    )
    roles = ["b", "p", *(f"s{i}" for i in range(submit_tenants))]
    tenants = {role: tenant_create(name=f"{run}-{role}", plan=plan) for role in roles}
    keys = {role: api_key_issue(tenant=tenant, name="bench")[1] for role, tenant in tenants.items()}
    submitters = roles[2:]
    model = DiffusionModel.objects.create(
        slug=f"null-{run.removeprefix('bench-api-')}",
        name="bench.api: no worker consumes this model's queue",
        family=Family.SD15,
        source_uri="/nonexistent/bench-api",
        revision="bench",
        owner=None,
    )
    body = {**BODY, "model": model.slug}
    poll = tuple(job_submit(tenant=tenants["p"], data=body)[0].public_id for _ in range(POLL_JOBS))
    return Fixtures(
        model=model.slug,
        submit_tenants=tuple(tenants[role].pk for role in submitters),
        submit_keys=tuple(keys[role] for role in submitters),
        baseline_key=keys["b"],
        poll_key=keys["p"],
        poll_jobs=poll,
    )


def cancel_in_flight(tenant_ids: tuple[int, ...]) -> None:
    """Mark the tenants' admitted jobs canceled, as if they had run (outside measured time)."""
    from django.utils import timezone

    from jobs.models import Job

    Job.objects.filter(tenant_id__in=tenant_ids, status__in=Job.IN_FLIGHT).update(
        status=Job.Status.CANCELED, completed_at=timezone.now()
    )


def retire_model(slug: str) -> None:
    """Disable the run's model in a database that is kept: no tenant's catalog lists it."""
    from jobs.models import DiffusionModel

    DiffusionModel.objects.filter(slug=slug).update(enabled=False)


def start_drain(stack: devstack.Stack, home: Home, model: str) -> None:
    """Keep the model's queue near-empty (bench/api_drain.py: moto's sends slow as it fills)."""
    from sdsaas.broker.sqs import model_queue_name

    endpoint = f"http://127.0.0.1:{home.aws_port}"
    argv = [sys.executable, "-m", "bench.api_drain", endpoint, model_queue_name(model)]
    stack.start("drain", argv)


def start_servers(stack: devstack.Stack, home: Home) -> dict[str, str]:
    """Both gunicorns (sdsaas on the home's API port): their base URLs by side."""
    devstack.start_api(stack, port=home.api_port)
    port = devstack.free_port()
    argv = [str(devstack.BIN / "gunicorn"), "-c", "python:sdsaas.gunicorn_conf", "sdsaas.wsgi"]
    baseline_env = {
        **stack.env,
        "DJANGO_SETTINGS_MODULE": "bench.api_baseline.settings",
        "SDSAAS_API_BIND": f"127.0.0.1:{port}",
    }
    stack.start("baseline", argv, baseline_env)
    bases = {"sdsaas": home.base, "baseline": f"http://127.0.0.1:{port}"}
    for base in bases.values():
        devstack.wait_http(f"{base}/healthz", 90, stack)
    return bases


def cpu_meter(stack: devstack.Stack, database: str) -> CpuMeter:
    """CPU time by part of the stack: each side's gunicorn, the database's backends, the SQS
    server with the drain, and this process (the client)."""
    pids = {name: process.pid for name, process in stack.processes}

    def sqs() -> list[psutil.Process]:
        return [*tree(pids["moto_server"])(), *tree(pids["drain"])()]

    return CpuMeter(
        {
            "sdsaas": tree(pids["api"]),
            "baseline": tree(pids["baseline"]),
            "postgres": database_backends(database),
            "sqs": sqs,
            "client": lambda: [psutil.Process()],
        }
    )


# --- the measurements ---------------------------------------------------------------------------


@dataclass
class Figure:
    """One figure's rounds on both sides."""

    name: str
    sdsaas: list[Round]
    baseline: list[Round]

    def summary(self) -> dict[str, Any]:
        ours = [r.rate for r in self.sdsaas]
        theirs = [r.rate for r in self.baseline]
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        out: dict[str, Any] = {
            f"{self.name}_ratio": round(statistics.median(ratios), 3),
            f"{self.name}_rps": round(statistics.median(ours), 1),
            f"{self.name}_baseline_rps": round(statistics.median(theirs), 1),
        }
        for side, rounds in (("", self.sdsaas), ("baseline_", self.baseline)):
            latencies = [ms for r in rounds for ms in r.latencies_ms]
            for q in (50, 99):
                out[f"{self.name}_{side}p{q}_ms"] = percentile(latencies, q, 1)
        out[f"{self.name}_rps_per_round"] = [round(x, 1) for x in ours]
        out[f"{self.name}_baseline_rps_per_round"] = [round(x, 1) for x in theirs]
        out[f"{self.name}_ratio_per_round"] = [round(x, 3) for x in ratios]
        out[f"{self.name}_cpu_ms_per_request"] = {
            "sdsaas": _median_cpu(self.sdsaas),
            "baseline": _median_cpu(self.baseline),
        }
        return out


def _median_cpu(rounds: list[Round]) -> dict[str, float]:
    """Each part's CPU ms per request, the median over the rounds, and their sum."""
    parts = {part: round(statistics.median(r.cpu_ms[part] for r in rounds), 2) for part in CPU}
    return {**parts, "total": round(sum(parts.values()), 2)}


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        bases: dict[str, str],
        fx: Fixtures,
        meter: CpuMeter,
    ) -> None:
        self.args = args
        self.bases = bases
        self.fx = fx
        self.meter = meter
        self.body = json.dumps({**BODY, "model": fx.model}).encode()

    def _round(self, figure: str, side: str, requests: int) -> Round:
        if figure == "submit":
            keys = self.fx.submit_keys if side == "sdsaas" else (self.fx.baseline_key,)

            def make(i: int) -> Request:
                return Request("POST", "/v1/jobs", keys[i % len(keys)], self.body)

            expect = 202
        else:
            key, jobs = self.fx.poll_key, self.fx.poll_jobs

            def make(i: int) -> Request:
                return Request("GET", f"/v1/jobs/{jobs[i % len(jobs)]}", key)

            expect = 200
        before = self.meter.read()
        result = run_round(
            self.bases[side],
            clients=self.args.clients,
            requests=requests,
            make=make,
            expect=expect,
        )
        spent = self.meter.since(before)
        spent["api"] = spent[side]
        result.cpu_ms = {part: spent[part] * 1000 / requests for part in CPU}
        if figure == "submit" and side == "sdsaas":
            cancel_in_flight(self.fx.submit_tenants)
        if result.errors:
            raise SystemExit(
                f"{figure} on {side}: {dict(result.errors)} of {requests} requests; first: "
                f"{result.first_error}"
            )
        return result

    def figure(self, name: str) -> Figure:
        warm = max(64, 2 * self.args.clients)
        for side in self.bases:
            self._round(name, side, warm)
        figure = Figure(name, [], [])
        for i in range(self.args.rounds):
            order = ("sdsaas", "baseline") if i % 2 == 0 else ("baseline", "sdsaas")
            for side in order:
                result = self._round(name, side, self.args.requests)
                (figure.sdsaas if side == "sdsaas" else figure.baseline).append(result)
            ours, theirs = figure.sdsaas[-1], figure.baseline[-1]
            print(
                f"  {name} round {i + 1}/{self.args.rounds}: sdsaas {ours.rate:.1f} req/s, "
                f"baseline {theirs.rate:.1f} req/s, ratio {ours.rate / theirs.rate:.3f}"
            )
        return figure


# --- the report ---------------------------------------------------------------------------------


def print_table(summary: dict[str, Any]) -> None:
    s = summary
    rows = [
        ("submit req/s", s["submit_rps"], s["submit_baseline_rps"], s["submit_ratio"], ">= 0.6"),
        ("submit p50 ms", s["submit_p50_ms"], s["submit_baseline_p50_ms"], None, ""),
        ("submit p99 ms", s["submit_p99_ms"], s["submit_baseline_p99_ms"], None, "< 100"),
        ("poll req/s", s["poll_rps"], s["poll_baseline_rps"], s["poll_ratio"], ">= 0.85"),
        ("poll p50 ms", s["poll_p50_ms"], s["poll_baseline_p50_ms"], None, ""),
        ("poll p99 ms", s["poll_p99_ms"], s["poll_baseline_p99_ms"], None, ""),
    ]
    met = {
        "submit req/s": s["submit_ratio"] >= GOALS["submit_ratio"],
        "submit p99 ms": s["submit_p99_ms"] < GOALS["submit_p99_ms"],
        "poll req/s": s["poll_ratio"] >= GOALS["poll_ratio"],
    }
    print()
    print(f"{'figure':<15} {'sdsaas':>9} {'baseline':>9} {'ratio':>7}  {'goal':<8} met?")
    for name, ours, theirs, ratio, goal in rows:
        ok = {True: "yes", False: "NO"}.get(met[name], "") if name in met else ""
        shown = "" if ratio is None else ratio
        print(f"{name:<15} {ours:>9} {theirs:>9} {shown:>7}  {goal:<8} {ok}")
    print()
    print(f"{'CPU ms/request':<18} " + " ".join(f"{part:>8}" for part in (*CPU, "total")))
    for figure in ("submit", "poll"):
        for side, cpu in s[f"{figure}_cpu_ms_per_request"].items():
            values = " ".join(f"{cpu[part]:>8}" for part in (*CPU, "total"))
            print(f"{figure + ' ' + side:<18} {values}")
    p = s["profile"]
    where = "a background thread" if p["publish_in_background"] else "the request, after commit"
    print()
    print(
        f"one submit alone, ms (p50 of {p['submits']}): request {p['total_ms']} = SQL "
        f"{p['sql_ms']} ({p['statements']} statements) + neither SQL nor SQS {p['python_ms']}; "
        f"publish in {where} {p['publish_ms']} (SQS send {p['sqs_send_ms']}), done "
        f"{p['publish_lag_ms']} after the response"
    )
    print(
        "  request statements: " + ", ".join(f"{k} x{n}" for k, n in p["statement_kinds"].items())
    )
    print()


def main() -> int:
    args = parse_args()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    began = time.monotonic()
    url = database_url()
    created = database_create(url)
    home = Home.create("bench-api")
    served = {**SERVED, "SDSAAS_DEBUG": "1"} if args.debug else SERVED
    env, _ = stack_env(
        home,
        prefix="benchapi",
        DATABASE_URL=url,
        SDSAAS_API_WORKERS=str(args.workers),
        **served,
    )
    use_env(env)
    stack = devstack.Stack(env, home.logs)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    where = f"{urlsplit(url).hostname}:{urlsplit(url).port}/{_server(url)[0]}"
    print(f"sdsaas API bench ({args.mode}; PostgreSQL {where}); logs in {home.path}")
    ok, fixtures = False, None
    try:
        devstack.start_aws(stack, port=home.aws_port)
        stack.manage("migrate", "--no-input")
        import django

        django.setup()
        fixtures = create_fixtures(args.tenants)
        start_drain(stack, home, fixtures.model)
        bases = start_servers(stack, home)
        bench = Bench(args, bases, fixtures, cpu_meter(stack, _server(url)[0]))
        summary: dict[str, Any] = {}
        for name in ("submit", "poll"):
            summary.update(bench.figure(name).summary())
        summary["profile"] = profile_submits(
            key=fixtures.submit_keys[0],
            body={**BODY, "model": fixtures.model},
            count=args.profile_submits,
            stats=args.cprofile,
        )
        summary.update(
            mode=args.mode,
            requests=args.requests,
            rounds=args.rounds,
            clients=args.clients,
            workers=args.workers,
            tenants=args.tenants,
            debug=args.debug,
            cores=os.cpu_count(),
            database=where,
            wall_s=round(time.monotonic() - began, 1),
        )
        print_table(summary)
        print(json.dumps(summary))
        ok = True
        return 0
    finally:
        for name, _ in list(stack.processes):
            stack.kill(name)
        if created:
            database_drop(url)
        elif fixtures is not None:
            retire_model(fixtures.model)
        if ok and not args.keep:
            home.remove()


if __name__ == "__main__":
    sys.exit(main())
