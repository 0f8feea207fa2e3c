"""`make run`: the whole local stack in one command, stopped with Ctrl-C.

Starts the SQS/S3-compatible server (moto_server), migrates, seeds a demo tenant and model,
builds the tiny model if needed, then runs the API (gunicorn), the control worker, the scheduler
and a GPU worker on the CPU (Celery), submits a demo job, saves its image to a path it prints and
keeps serving. `--exit-after-demo` stops everything once the demo image is saved (CI).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class Stack:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
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

    def check_alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with {process.returncode}: see its log")

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, process in self.processes:
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


def api(method: str, url: str, key: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--api-port", type=int, default=int(os.environ.get("SDSAAS_API_PORT", 8000))
    )
    parser.add_argument(
        "--aws-port", type=int, default=int(os.environ.get("SDSAAS_AWS_PORT", 4566))
    )
    parser.add_argument("--exit-after-demo", action="store_true")
    args = parser.parse_args()

    var = ROOT / "var"
    logs = var / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    aws = f"http://127.0.0.1:{args.aws_port}"
    base = f"http://127.0.0.1:{args.api_port}"
    env = {
        **os.environ,
        "SDSAAS_DEBUG": "1",
        "SDSAAS_SQS_ENDPOINT_URL": aws,
        "SDSAAS_S3_ENDPOINT_URL": aws,
        "SDSAAS_PUBLIC_BASE_URL": base,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": os.environ.get("SDSAAS_AWS_REGION", "us-east-1"),
        "SDSAAS_SWEEP_UNPUBLISHED_AFTER": "5",
    }
    stack = Stack(env, logs)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("sdsaas local stack")
    try:
        moto = shutil.which("moto_server") or str(BIN / "moto_server")
        stack.start("moto_server", [moto, "-H", "127.0.0.1", "-p", str(args.aws_port)])
        wait_http(f"{aws}/moto-api/", 30, stack)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=aws,
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id="local",
            aws_secret_access_key="local",
        ).create_bucket(Bucket=os.environ.get("SDSAAS_S3_BUCKET", "sdsaas-local"))
        stack.manage("migrate", "--no-input")
        tiny = var / "models" / "tiny"
        if not (tiny / "model_index.json").is_file():
            print("  building the tiny test model (random weights) in", tiny)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gpu_worker.build_model",
                    "--arch",
                    "tiny",
                    "--out",
                    str(tiny),
                ],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
            )
        key = stack.manage("seed_demo", "--model-uri", str(tiny)).strip()
        prefix = os.environ.get("SDSAAS_SQS_QUEUE_PREFIX", "sdsaas")
        celery = [str(BIN / "celery"), "-A", "sdsaas"]
        stack.start(
            "api",
            [
                str(BIN / "gunicorn"),
                "sdsaas.wsgi",
                "-b",
                f"127.0.0.1:{args.api_port}",
                "-w",
                "2",
                "--access-logfile",
                "-",
            ],
        )
        stack.start(
            "control-worker",
            [*celery, "worker", "-Q", f"{prefix}-control", "-c", "2", "-n", "control@%h"],
            {**env, "SDSAAS_ROLE": "control"},
        )
        # GPU workers hold no database credentials.
        gpu_env = {k: v for k, v in env.items() if k != "DATABASE_URL"}
        stack.start(
            "gpu-worker",
            [
                str(BIN / "celery"),
                "-A",
                "gpu_worker.worker",
                "worker",
                "-P",
                "solo",
                "-Q",
                f"{prefix}-model-tiny",
                "-n",
                "gpu@%h",
            ],
            {**gpu_env, "SDSAAS_ROLE": "gpu"},
        )
        stack.start("scheduler", [*celery, "beat", "-s", str(var / "celerybeat-schedule")])
        wait_http(f"{base}/healthz", 60, stack)

        job = api("POST", f"{base}/v1/jobs", key, {"model": "tiny", "prompt": "a red fox"})
        print(f"\ndemo job {job['id']}: {job['status']} (seed {job['input']['seed']})")
        job = wait_job(job["urls"]["get"], key, 300, stack)
        print(json.dumps(job, indent=2))
        if job["status"] != "succeeded":
            raise SystemExit(f"demo job ended {job['status']}: see {logs}")
        image = var / "demo" / f"{job['id']}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(job["output"][0], timeout=10) as response:
            image.write_bytes(response.read())
        print(f"\ndemo image saved to {image}")
        print(f"\nAPI {base}/v1/  docs {base}/v1/docs  admin {base}/admin/")
        print(f"demo API key (shown once): {key}\n")
        print(f"  curl -H 'Authorization: Bearer {key}' {base}/v1/jobs")
        print(
            f"  curl -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n"
            f'       -d \'{{"model": "tiny", "prompt": "a lighthouse"}}\' {base}/v1/jobs'
        )
        if args.exit_after_demo:
            return
        print("\nserving; Ctrl-C stops everything")
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping")
        stack.stop()


if __name__ == "__main__":
    main()
