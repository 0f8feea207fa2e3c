"""What the benchmarks read from a GPU worker's log (bench/worker_log.py): lines as the worker
writes them at --loglevel INFO."""

from __future__ import annotations

from bench.worker_log import entries

LOG = """\
[2026-11-29 18:00:00,000: INFO/MainProcess] gpu@host ready.
[2026-11-29 18:00:01,250: INFO/MainProcess] Task gpu.generate[3f2a] received
[2026-11-29 18:00:01,260: INFO/MainProcess] job job_a1 attempt 1 (contract v1)
[2026-11-29 18:00:01,270: INFO/MainProcess] job job_a1 runs in a batch with job_b2, job_c3
[2026-11-29 18:00:01,500: INFO/MainProcess] Task gpu.generate[3f2a] succeeded in 0.24s: 'ok'
[2026-11-29 18:00:01,510: INFO/MainProcess] job job_d4 attempt 2 (contract v1)
[2026-11-29 18:00:01,600: ERROR/MainProcess] Task gpu.generate[9e1b] raised unexpected: boom
"""


def test_the_log_tells_starts_batches_ends_and_readiness_in_order() -> None:
    found = entries(LOG)
    assert [(e.kind, e.job, e.attempt, e.outcome, e.batch) for e in found] == [
        ("ready", "", 0, "", ()),
        ("start", "job_a1", 1, "", ()),
        ("batch", "", 0, "", ("job_b2", "job_c3")),
        ("end", "", 0, "succeeded", ()),
        ("start", "job_d4", 2, "", ()),
        ("end", "", 0, "raised", ()),
    ]
    assert round(found[3].at - found[1].at, 3) == 0.24  # the log's own milliseconds
