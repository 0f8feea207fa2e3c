"""`make run`'s GPU worker pools: one per model, local processes sized as ECS sizes the real ones.

The control plane's scaling publisher (jobs/services/scaling.py, the policy of jobs/scaling.py)
publishes each model's `DesiredWorkers` to CloudWatch (here the local AWS-compatible server) every
SCALING_PERIOD_S, and at once when a job arrives for an empty pool. `LocalPools.follow`, called
every second by the stack, reads the latest value of each model and starts or stops local
`celery -A gpu_worker.worker` processes to match, the way ECS service auto scaling sets a
service's desired count:

- up: a new worker process on the model's queue (it loads the model at its first job);
- down: only workers that are not protected from scale-in are stopped (SIGTERM, a warm stop).
  Each worker process talks to its own loopback stand-in for the ECS agent (`LocalAgent`,
  `ECS_AGENT_URI`), so it protects itself while it holds a job exactly as on ECS
  (gpu_worker/protection.py), and a busy worker is never stopped by a scale-in.

A model with no datapoint in the last METRIC_WINDOW_S (the scheduler is not running) keeps its
workers as they are.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

AGENT_PATH = "/task-protection/v1/state"
METRIC_WINDOW_S = 60


class LocalAgent:
    """A loopback stand-in for the ECS agent's task-protection endpoint, one path per worker:
    `<url>/<worker>/task-protection/v1/state`. Protection expires as on ECS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._protected_until: dict[str, dt.datetime] = {}
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                worker, _, path = self.path.lstrip("/").partition("/")
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                    enabled = bool(body["ProtectionEnabled"])
                    minutes = int(body.get("ExpiresInMinutes", 120))
                except (ValueError, KeyError, TypeError):
                    self._answer(400, {"error": {"Code": "InvalidParameterException"}})
                    return
                if "/" + path != AGENT_PATH:
                    self._answer(404, {"error": {"Code": "NotFound"}})
                    return
                try:
                    until = agent.protect(worker, enabled=enabled, minutes=minutes)
                except Exception as exc:  # answered as the agent answers its own failures
                    self._answer(500, {"error": {"Code": "ServerException", "Message": str(exc)}})
                    return
                self._answer(
                    200,
                    {
                        "protection": {
                            "ProtectionEnabled": enabled,
                            "ExpirationDate": until.isoformat() if until else None,
                            "TaskArn": f"local/{worker}",
                        }
                    },
                )

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="ecs-agent", daemon=True).start()

    def protect(self, worker: str, *, enabled: bool, minutes: int) -> dt.datetime | None:
        with self._lock:
            if not enabled:
                self._protected_until.pop(worker, None)
                return None
            until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)
            self._protected_until[worker] = until
            return until

    def uri(self, worker: str) -> str:
        """The worker's `ECS_AGENT_URI`."""
        return f"{self.url}/{worker}"

    def protected(self, worker: str) -> bool:
        with self._lock:
            until = self._protected_until.get(worker)
            return until is not None and until > dt.datetime.now(dt.UTC)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]


@dataclass
class LocalPools:
    """Each model's local worker processes, following its published `DesiredWorkers`.

    `start_worker(name, slug, env)` starts one process on the model's queue with `env` added
    (the stack's own, so it is logged and stopped with the rest); `stop_worker(name)` begins its
    warm stop (SIGTERM: it takes nothing new); `cloudwatch` is a boto3 client of the local server.
    """

    cloudwatch: Any
    namespace: str
    deployment: str
    start_worker: Callable[[str, str, dict[str, str]], subprocess.Popen[bytes]]
    stop_worker: Callable[[str], None]
    agent: LocalAgent = field(default_factory=LocalAgent)
    pools: dict[str, list[Worker]] = field(default_factory=dict)
    started: int = 0
    _closed: threading.Event = field(default_factory=threading.Event)
    _resizing: threading.Lock = field(default_factory=threading.Lock)

    def start(self, every_s: float = 1.0) -> None:
        """Follow the pools every `every_s` on a thread, until `stop_following`."""

        def run() -> None:
            while not self._closed.wait(every_s):
                try:
                    self.follow()
                except Exception as exc:  # the local server busy: the next pass tries again
                    if not self._closed.is_set():  # not the stack's stop
                        print(f"  pools: {exc.__class__.__name__}: {exc}")

        threading.Thread(target=run, name="pools", daemon=True).start()

    def follow(self) -> dict[str, int]:
        """One pass: each model's pool to its latest desired size; the sizes seen."""
        desired = self.desired()
        for slug, workers in desired.items():
            self.resize(slug, workers)
        return desired

    def desired(self) -> dict[str, int]:
        now = dt.datetime.now(dt.UTC)
        metrics = self.cloudwatch.list_metrics(
            Namespace=self.namespace,
            MetricName="DesiredWorkers",
            Dimensions=[{"Name": "Deployment", "Value": self.deployment}],
        )["Metrics"]
        slugs = sorted(d["Value"] for m in metrics for d in m["Dimensions"] if d["Name"] == "Model")
        if not slugs:
            return {}
        queries = [
            {
                "Id": f"m{index}",
                "Label": slug,
                "MetricStat": {
                    "Metric": {
                        "Namespace": self.namespace,
                        "MetricName": "DesiredWorkers",
                        "Dimensions": [
                            {"Name": "Deployment", "Value": self.deployment},
                            {"Name": "Model", "Value": slug},
                        ],
                    },
                    "Period": 1,
                    "Stat": "Maximum",
                },
            }
            for index, slug in enumerate(slugs)
        ]
        results = self.cloudwatch.get_metric_data(
            MetricDataQueries=queries,
            StartTime=now - dt.timedelta(seconds=METRIC_WINDOW_S),
            EndTime=now + dt.timedelta(seconds=5),
            ScanBy="TimestampDescending",
        )["MetricDataResults"]
        return {slugs[int(r["Id"][1:])]: int(r["Values"][0]) for r in results if r["Values"]}

    def resize(self, slug: str, desired: int) -> None:
        with self._resizing:
            if not self._closed.is_set():
                self._resize(slug, desired)

    def _resize(self, slug: str, desired: int) -> None:
        pool = self.pools.setdefault(slug, [])
        pool[:] = [w for w in pool if w.process.poll() is None]  # a worker that ended is gone
        while len(pool) < desired:
            self.started += 1
            name = f"gpu-{slug}-{self.started}"
            env = {
                "ECS_AGENT_URI": self.agent.uri(name),
                "SDSAAS_GPU_SPOT_POLL_S": "0",  # no instance metadata on a laptop
            }
            pool.append(Worker(name, self.start_worker(name, slug, env)))
            print(f"  pool {slug}: {len(pool)} worker(s) (started {name})")
        excess = len(pool) - desired
        for worker in [w for w in pool if not self.agent.protected(w.name)][: max(0, excess)]:
            self.stop_worker(worker.name)
            pool.remove(worker)
            print(f"  pool {slug}: {len(pool)} worker(s) (stopping idle {worker.name})")

    def size(self, slug: str) -> int:
        return sum(1 for w in self.pools.get(slug, []) if w.process.poll() is None)

    def stop_following(self) -> None:
        """No worker is started or stopped from here on; waits only for a start or stop under way,
        not for a pass's calls to the local server (the workers are the stack's to stop)."""
        self._closed.set()
        with self._resizing:
            pass

    def close(self) -> None:
        """Stop following, and the ECS agent stand-in: once the workers, who call it as they
        stop, have stopped."""
        self.stop_following()
        self.agent.close()
