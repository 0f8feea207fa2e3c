"""CPU time spent by each part of the API benchmark's stack over a round, from /proc (psutil).

On a 2-core machine the API, PostgreSQL, the SQS server and the client share the cores, so a
side's rate is about the cores over its CPU per request: these groups say whose CPU that is.
A process that ends between two readings drops out (none should: gunicorn's workers and the
database's backends, kept by CONN_MAX_AGE, live through the run).
"""

from __future__ import annotations

from collections.abc import Callable

import psutil

# CPU seconds of each process by (group, pid, start time): a pid may be reused.
Snapshot = dict[tuple[str, int, float], float]


def tree(pid: int) -> Callable[[], list[psutil.Process]]:
    """A process and all its descendants (a gunicorn master and its workers), as they are now."""

    def processes() -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    return processes


def database_backends(name: str) -> Callable[[], list[psutil.Process]]:
    """PostgreSQL's backend processes serving database `name` (their title names it)."""

    def processes() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["name", "cmdline"]):
            title = " ".join(process.info["cmdline"] or [])
            if process.info["name"] == "postgres" and f" {name} " in f"{title} ":
                found.append(process)
        return found

    return processes


class CpuMeter:
    """Readings of CPU seconds by process; `since` gives what each group spent after one."""

    def __init__(self, groups: dict[str, Callable[[], list[psutil.Process]]]) -> None:
        self.groups = groups

    def read(self) -> Snapshot:
        readings: Snapshot = {}
        for name, find in self.groups.items():
            for process in find():
                try:
                    times = process.cpu_times()
                    readings[(name, process.pid, process.create_time())] = times.user + times.system
                except psutil.Error:  # ended meanwhile
                    continue
        return readings

    def since(self, before: Snapshot) -> dict[str, float]:
        """CPU seconds of each group since `before`: a process started since counts whole."""
        spent = dict.fromkeys(self.groups, 0.0)
        for key, seconds in self.read().items():
            spent[key[0]] += seconds - before.get(key, 0.0)
        return spent
