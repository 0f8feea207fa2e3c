"""The GPU worker slots: a worker started, SIGKILLed and replaced, and what its log tells."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import worker_log
from sdsaas import devstack


@dataclass
class Run:
    """One delivery of a job, as its worker's log tells it (times are time.time())."""

    job: str
    attempt: int
    process: str
    start: float
    end: float | None = None  # the task's end; None while it runs, or for good once killed
    killed_at: float | None = None
    batch: tuple[str, ...] = ()  # the other jobs of its micro-batch (killed with it)


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
        entries, self.offset = worker_log.read_new(logs / f"{self.process}.log", self.offset)
        for entry in entries:
            if entry.kind == "start":
                self.current = Run(entry.job, entry.attempt, self.process, entry.at)
                self.runs.append(self.current)
            elif entry.kind == "ready":
                self.current = None  # a run cut short by a restart has no end
                if not self.ready:
                    self.ready = True
                    self.boot_s.append(time.monotonic() - self.started_at)
            elif entry.kind == "batch" and self.current is not None:
                self.current.batch = entry.batch
            elif entry.kind == "end" and self.current is not None:
                self.current.end, self.current = entry.at, None
