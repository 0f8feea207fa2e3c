"""What a GPU worker's log tells (Celery at --loglevel INFO): when each job started and ended on
the worker, and when the worker became ready. Times are the log's own, to the millisecond."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Celery's log lines: `[2026-01-31 12:00:00,123: INFO/MainProcess] job job_… attempt 2` when the
# GPU task takes a job, `job job_a runs in a batch with job_b, job_c` when it takes more to run
# with it (SDSAAS_GPU_MAX_BATCH), `Task gpu.generate[<id>] succeeded in …` (raised, retry…) when
# it ends, `gpu-a@host ready.` when the worker (re)starts (a watchdog restart execs in the same
# process).
LOG_LINE = re.compile(
    r"^\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]*\] "
    r"(?:job (?P<job>job_\w+) attempt (?P<attempt>\d+)|(?P<ready>\S+ ready\.$)"
    r"|job job_\w+ runs in a batch with (?P<batch>job_\w+(?:, job_\w+)*)$"
    r"|Task gpu\.generate\[[^\]]+\] (?!received)(?P<end>\w+))",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Entry:
    """One line that matters: a job's start (`job`, `attempt`), the jobs its task runs with
    (`batch`), a task's end (`outcome`: the word Celery logs, `succeeded` or another) or the
    worker's readiness. `at` is time.time()."""

    at: float
    kind: Literal["start", "batch", "end", "ready"]
    job: str = ""
    attempt: int = 0
    outcome: str = ""
    batch: tuple[str, ...] = ()


def read_new(path: Path, offset: int) -> tuple[list[Entry], int]:
    """The entries of the whole lines written to `path` after byte `offset`, and the offset to
    read from next time (a missing file has none yet)."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            chunk = log.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n") + 1  # whole lines only
    return entries(chunk[:end].decode(errors="replace")), offset + end


def entries(text: str) -> list[Entry]:
    found = []
    for match in LOG_LINE.finditer(text):
        at = dt.datetime.strptime(match.group("at"), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if match.group("job"):
            found.append(Entry(at, "start", match.group("job"), int(match.group("attempt"))))
        elif match.group("ready"):
            found.append(Entry(at, "ready"))
        elif match.group("batch"):
            found.append(Entry(at, "batch", batch=tuple(match.group("batch").split(", "))))
        else:
            found.append(Entry(at, "end", outcome=match.group("end")))
    return found
