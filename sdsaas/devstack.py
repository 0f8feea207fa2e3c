"""`make run`: the whole local stack in one command, stopped with Ctrl-C.

Starts the AWS-compatible server (moto_server: SQS, S3, CloudWatch), migrates, seeds a demo
tenant and model, builds the tiny model if needed, then runs the API (gunicorn), the control
worker, the scheduler and a GPU worker pool per model on the CPU (Celery; empty until a job
arrives, back to empty after the keep-alive: sdsaas/local_pools.py), submits a demo job, saves
its image to a path it prints and keeps serving. `--exit-after-demo` stops everything once the
demo image is saved (CI).

The demo job is submitted as the stack's own tenant (`devstack`), not with the demo key it prints:
whatever is done with that key in one run (its rate limit or credits spent, a backlog of queued
jobs) cannot refuse or hold up the demo of the next. An HTTP error of the demo ends the run with
one line that says what was refused and why, never a traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sdsaas.local_pools import LocalPools

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CELERY = [str(BIN / "celery"), "-A", "sdsaas"]


class Stack:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.retiring: set[str] = set()

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append((name, process))
        print(f"  started {name:<15} pid {process.pid:<7} log {self.logs / (name + '.log')}")
        return process

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise SystemExit(f"manage.py {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def kill(self, name: str) -> None:
        """SIGKILL one process it started, as a lost node dies (the soak's chaos), and forget it."""
        for entry in [entry for entry in self.processes if entry[0] == name]:
            os.killpg(entry[1].pid, signal.SIGKILL)
            entry[1].wait()
            self.processes.remove(entry)

    def retire(self, name: str) -> None:
        """Begin a process's warm stop (SIGTERM) and expect it to end: a scaled-in worker."""
        for process_name, process in self.processes:
            if process_name == name and process.poll() is None:
                self.retiring.add(name)  # first: check_alive may look while it exits
                os.killpg(process.pid, signal.SIGTERM)

    def check_alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None and name not in self.retiring:
                raise SystemExit(f"{name} exited with {process.returncode}: see its log")

    def stop(self) -> None:
        # The local AWS server last: a worker whose SQS went away first polls it again until the
        # deadline and SIGKILL, instead of stopping warm.
        processes = [process for _, process in reversed(self.processes)]
        servers = [process for name, process in self.processes if name == "moto_server"]
        _stop([process for process in processes if process not in servers])
        _stop(servers)


def free_port() -> int:
    """A port free now on 127.0.0.1, for a server started later (tests, benchmarks).

    Below the kernel's range of ephemeral ports: a port picked from it (`bind(0)` picks there)
    can be taken as the local port of any outgoing connection (to moto, to PostgreSQL) before
    the server binds it.
    """
    low = _ephemeral_ports_start()
    lowest = 10_000 if low > 11_000 else 1024  # above the well-known and registered ports
    for _ in range(100):
        port = random.randrange(lowest, low) if low > lowest else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port below the ephemeral range")


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process's group, then SIGKILL what still runs 15 s later."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def wait_http(url: str, timeout: float, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:  # refused, reset or timed out (URLError is an OSError)
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def wait_job(url: str, key: str, timeout: float, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        job = api("GET", url, key)
        if job["status"] in {"succeeded", "failed", "canceled"}:
            return job
        time.sleep(0.5)
    raise SystemExit(f"the demo job did not finish within {timeout}s")


def api_request(
    method: str, url: str, key: str, body: dict[str, Any] | None = None
) -> urllib.request.Request:
    """A request to the API with an API key, and a JSON body if any."""
    return urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


def api(method: str, url: str, key: str, body: dict[str, Any] | None = None) -> Any:
    request = api_request(method, url, key, body)
    return json.loads(read(request, f"the demo's {method} {url}"))


def read(request: urllib.request.Request | str, what: str) -> bytes:
    """The response's body; an HTTP error or no answer ends the run with one line naming `what`."""
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{what} failed: HTTP {exc.code} {http_error_text(exc)}") from None
    except OSError as exc:  # refused, reset or timed out (URLError is an OSError)
        raise SystemExit(f"{what} got no answer: {exc}") from None


def http_error_text(exc: urllib.error.HTTPError) -> str:
    """`code: message` of the API's error shape (the reason phrase otherwise), and Retry-After."""
    try:
        error = json.loads(exc.read())["error"]
        text = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        text = str(exc.reason)
    retry_after = exc.headers.get("Retry-After")
    return f"{text} (Retry-After: {retry_after} s)" if retry_after else text


def build_tiny_model(tiny: Path, env: dict[str, str]) -> None:
    """Build the tiny model when it is missing or older than its builder, as make would: a model
    left by an earlier recipe (another shape, too slow for the sizes the catalog now allows)
    is replaced. The builder is the package gpu_worker/build_model/: its newest file counts."""
    index = tiny / "model_index.json"
    builder = max(
        path.stat().st_mtime for path in (ROOT / "gpu_worker" / "build_model").glob("*.py")
    )
    if index.is_file() and index.stat().st_mtime >= builder:
        return
    print("  building the tiny test model (random weights) in", tiny)
    # Built aside and moved in whole: a build cut short leaves no folder that looks complete.
    partial = tiny.with_name(f"{tiny.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    argv = ["-m", "gpu_worker.build_model", "--arch", "tiny", "--out", str(partial)]
    done = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"building the tiny model failed:\n{done.stderr}")
    shutil.rmtree(tiny, ignore_errors=True)
    partial.rename(tiny)


def local_env(*, aws: str, base: str) -> dict[str, str]:
    """The environment of the local stack's processes: SQS and S3 at `aws`, the API at `base`."""
    return {
        **os.environ,
        "SDSAAS_DEBUG": "1",
        "SDSAAS_SQS_ENDPOINT_URL": aws,
        "SDSAAS_S3_ENDPOINT_URL": aws,
        "SDSAAS_PUBLIC_BASE_URL": base,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": os.environ.get("SDSAAS_AWS_REGION", "us-east-1"),
        "SDSAAS_SWEEP_UNPUBLISHED_AFTER": "5",
        # Jobs whose messages died with the last run's SQS server are sent again within about 20 s
        # of this start (moto's queue counts are exact: no lag to wait out): the reconciler
        # looks every 5 s, and acts at its second look, 10 s after the first.
        "SDSAAS_RECONCILE_AFTER_S": os.environ.get("SDSAAS_RECONCILE_AFTER_S", "15"),
        "SDSAAS_SWEEP_EVERY_S": os.environ.get("SDSAAS_SWEEP_EVERY_S", "5"),
        # A pool keeps its warm worker a minute after its last job here (10 minutes by default),
        # so that a laptop sees the pool go back to zero.
        "SDSAAS_SCALING_KEEP_ALIVE_S": os.environ.get("SDSAAS_SCALING_KEEP_ALIVE_S", "60"),
    }


def start_aws(stack: Stack, *, port: int) -> None:
    """moto_server on loopback (SQS and S3, empty at each start) with the bucket created."""
    aws = f"http://127.0.0.1:{port}"
    moto = shutil.which("moto_server") or str(BIN / "moto_server")
    stack.start("moto_server", [moto, "-H", "127.0.0.1", "-p", str(port)])
    wait_http(f"{aws}/moto-api/", 30, stack)
    import boto3

    boto3.client(
        "s3",
        endpoint_url=aws,
        region_name=stack.env["AWS_DEFAULT_REGION"],
        aws_access_key_id="local",
        aws_secret_access_key="local",
    ).create_bucket(Bucket=stack.env.get("SDSAAS_S3_BUCKET", "sdsaas-local"))


def prepare_database(stack: Stack, *, tiny: Path) -> dict[str, str]:
    """Migrate, build the tiny model if needed, seed the catalog and the demo tenants.

    Returns seed_demo's new API keys: {"demo": ..., "devstack": ...}.
    """
    stack.manage("migrate", "--no-input")
    build_tiny_model(tiny, stack.env)
    keys: dict[str, str] = json.loads(stack.manage("seed_demo", "--model-uri", str(tiny)))
    return keys


def queue_prefix(stack: Stack) -> str:
    return stack.env.get("SDSAAS_SQS_QUEUE_PREFIX", "sdsaas")


def start_api(stack: Stack, *, port: int) -> None:
    argv = [str(BIN / "gunicorn"), "-c", "python:sdsaas.gunicorn_conf", "sdsaas.wsgi"]
    stack.start("api", argv, {**stack.env, "SDSAAS_API_BIND": f"127.0.0.1:{port}"})


def start_control_worker(stack: Stack) -> None:
    stack.start(
        "control-worker",
        [*CELERY, "worker", "-Q", f"{queue_prefix(stack)}-control", "-c", "2", "-n", "control@%h"],
        {**stack.env, "SDSAAS_ROLE": "control"},
    )


def start_sender(stack: Stack, queue: str) -> None:
    """The senders of one kind of notification (`webhooks`, `discord`): their own queue and
    workers, so a slow receiver or a Discord outage never delays job events; threads, since a
    send mostly waits on the network."""
    stack.start(
        f"{queue}-worker",
        [
            *CELERY,
            "worker",
            "-Q",
            f"{queue_prefix(stack)}-{queue}",
            "-P",
            "threads",
            "-c",
            "4",
            "-n",
            f"{queue}@%h",
        ],
        {**stack.env, "SDSAAS_ROLE": "control"},
    )


def start_gpu_worker(
    stack: Stack,
    name: str = "gpu-worker",
    node: str = "gpu",
    env: dict[str, str] | None = None,
    loglevel: str | None = None,
    model: str = "tiny",
) -> subprocess.Popen[bytes]:
    """A GPU worker (solo pool) on a model's queue; `env` adds to the stack's."""
    # GPU workers hold no database credentials.
    gpu_env = {k: v for k, v in {**stack.env, **(env or {})}.items() if k != "DATABASE_URL"}
    return stack.start(
        name,
        [
            str(BIN / "celery"),
            "-A",
            "gpu_worker.worker",
            "worker",
            "-P",
            "solo",
            "-Q",
            f"{queue_prefix(stack)}-model-{model}",
            "-n",
            f"{node}@%h",
            *(["--loglevel", loglevel] if loglevel else []),
        ],
        {**gpu_env, "SDSAAS_ROLE": "gpu"},
    )


def start_pools(stack: Stack) -> LocalPools:
    """The GPU worker pools, one per model, sized by what the scaling publisher asks for
    (sdsaas/local_pools.py): none until a job arrives. Followed every second on a thread."""
    import boto3

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsaas.settings")
    from django.conf import settings

    cloudwatch = boto3.client(
        "cloudwatch",
        endpoint_url=stack.env["SDSAAS_SQS_ENDPOINT_URL"],
        region_name=stack.env["AWS_DEFAULT_REGION"],
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    pools = LocalPools(
        cloudwatch,
        namespace=settings.SCALING_METRIC_NAMESPACE,
        deployment=queue_prefix(stack),
        start_worker=lambda name, slug, env: start_gpu_worker(
            stack, name=name, node=name, env=env, model=slug
        ),
        stop_worker=stack.retire,
    )
    pools.start()
    return pools


def start_scheduler(stack: Stack, *, schedule: Path) -> None:
    stack.start("scheduler", [*CELERY, "beat", "-s", str(schedule)])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--api-port", type=int, default=int(os.environ.get("SDSAAS_API_PORT", 8000))
    )
    parser.add_argument(
        "--aws-port", type=int, default=int(os.environ.get("SDSAAS_AWS_PORT", 4566))
    )
    parser.add_argument("--exit-after-demo", action="store_true")
    return parser.parse_args()


def run_demo(stack: Stack, *, base: str, key: str, var: Path) -> None:
    """Submit the demo job as the stack's own tenant, wait for it and save its image."""
    job = api("POST", f"{base}/v1/jobs", key, {"model": "tiny", "prompt": "a red fox"})
    seed = job["input"]["seed"]
    print(f"\ndemo job {job['id']} (tenant devstack): {job['status']} (seed {seed})")
    job = wait_job(job["urls"]["get"], key, 300, stack)
    print(json.dumps(job, indent=2))
    if job["status"] != "succeeded":
        raise SystemExit(f"demo job ended {job['status']}: see {stack.logs}")
    image = var / "demo" / f"{job['id']}.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(read(job["output"][0], "downloading the demo image"))
    print(f"\ndemo image saved to {image}")


def print_usage(*, base: str, key: str) -> None:
    """Where the API is, and the demo tenant's key with two curl lines that use it."""
    print(f"\nAPI {base}/v1/  docs {base}/v1/docs  admin {base}/admin/")
    print(f"demo API key (shown once): {key}\n")
    print(f"  curl -H 'Authorization: Bearer {key}' {base}/v1/jobs")
    print(
        f"  curl -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n"
        f'       -d \'{{"model": "tiny", "prompt": "a lighthouse"}}\' {base}/v1/jobs'
    )


def main() -> None:
    args = parse_args()
    # Progress must reach a pipe (`make run | tee run.log`) as it is printed, not at exit.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)

    var = ROOT / "var"
    logs = var / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    aws = f"http://127.0.0.1:{args.aws_port}"
    base = f"http://127.0.0.1:{args.api_port}"
    stack = Stack(local_env(aws=aws, base=base), logs)
    pools: LocalPools | None = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl-C stops it even when started with SIGINT ignored (a background job of a script, whose
    # children inherit that and in which Python then raises no KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("sdsaas local stack")
    try:
        start_aws(stack, port=args.aws_port)
        keys = prepare_database(stack, tiny=var / "models" / "tiny")
        key, own_key = keys["demo"], keys["devstack"]
        start_api(stack, port=args.api_port)
        start_control_worker(stack)
        start_sender(stack, "webhooks")
        start_sender(stack, "discord")
        pools = start_pools(stack)
        start_scheduler(stack, schedule=var / "celerybeat-schedule")
        wait_http(f"{base}/healthz", 60, stack)
        run_demo(stack, base=base, key=own_key, var=var)
        print_usage(base=base, key=key)
        if args.exit_after_demo:
            return
        print("\nserving; Ctrl-C stops everything")
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for stop_signal in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut it short
            signal.signal(stop_signal, signal.SIG_IGN)
        print("\nstopping")
        if pools is not None:
            pools.stop_following()
        stack.stop()
        if pools is not None:
            pools.close()


if __name__ == "__main__":
    main()
