"""The API benchmark's load: a fixed number of requests over concurrent client connections.

Each client is a thread with its own urllib3 keep-alive pool of one connection (gunicorn's sync
workers close each connection after its response, so urllib3 opens a new one per request, as a
real client of the API would). The round's rate is its requests over the time from the start,
all clients released at once, to the last answer.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import urllib3


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    key: str  # the API key it is sent with
    body: bytes | None = None


@dataclass
class Round:
    """What one round measured: its wall time, each request's latency, and what went wrong."""

    requests: int
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str = ""
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per request, by part of the stack

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.wall_s if self.wall_s else 0.0


def run_round(
    base: str,
    *,
    clients: int,
    requests: int,
    make: Callable[[int], Request],
    expect: int,
) -> Round:
    """Send `requests` requests (`make(i)` is the i-th) from `clients` threads at once."""
    url = urllib3.util.parse_url(base)
    result = Round(requests)
    counter = itertools.count()
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client() -> None:
        pool = urllib3.HTTPConnectionPool(
            url.host or "127.0.0.1",
            url.port,
            maxsize=1,
            block=True,
            timeout=urllib3.Timeout(connect=10, read=120),
            retries=False,
        )
        latencies: list[float] = []
        start.wait()
        try:
            # next() of an itertools.count is atomic under the GIL: each i goes to one client.
            while (i := next(counter)) < requests:
                request = make(i)
                began = time.perf_counter()
                try:
                    headers = {
                        "Authorization": f"Bearer {request.key}",
                        "Content-Type": "application/json",
                    }
                    response = pool.urlopen(
                        request.method, request.path, body=request.body, headers=headers
                    )
                    outcome, detail = response.status, response.data[:300].decode(errors="replace")
                except urllib3.exceptions.HTTPError as exc:
                    outcome, detail = 0, f"{exc.__class__.__name__}: {exc}"
                latencies.append((time.perf_counter() - began) * 1000)
                if outcome != expect:
                    with lock:
                        result.errors[f"HTTP {outcome}" if outcome else "no answer"] += 1
                        result.first_error = result.first_error or detail
        finally:
            pool.close()
            with lock:
                result.latencies_ms.extend(latencies)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - began
    return result
