"""The soak's count of deliveries no kill explains (bench/soak/timings.py), on constructed runs."""

from __future__ import annotations

import argparse
from collections import Counter
from types import SimpleNamespace

from bench.soak.chaos import Result
from bench.soak.checks import Outcome
from bench.soak.timings import extra_deliveries
from bench.soak.workers import Kill, Run


def test_a_kill_explains_the_next_delivery_of_every_job_of_the_batch_it_cut() -> None:
    # given a batch of three killed once, and a job alone delivered twice without a kill
    killed = Run("job_a", 1, "gpu.1", start=0.0, killed_at=1.0, batch=("job_b", "job_c"))
    result = Result(argparse.Namespace(), {}, [], [Kill(killed, 1.0)], [], 0.0, 0.0, 0.0)
    attempts = {"job_a": 2, "job_b": 2, "job_c": 2, "job_d": 2}
    jobs = {job: SimpleNamespace(public_id=job, attempt=n) for job, n in attempts.items()}
    outcome = Outcome(jobs, [], [], Counter(), {}, [], [])
    # then only the lone job's second delivery is extra
    assert extra_deliveries(result, outcome) == 1
