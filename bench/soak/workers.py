"""The GPU worker slots: a worker started, SIGKILLed and replaced, and what its log tells."""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

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
