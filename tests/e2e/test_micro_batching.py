"""Micro-batching on a real GPU worker (issue 14, item 4): jobs already waiting in a model's queue
with the delivered job's batch key run in its denoising loop, each still reported, metered and
stored on its own; a job of another key waiting with them runs alone, right after, on its first
receive. On the CPU this proves correctness only; the speed-up is a GPU figure (bench/README.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tenants.models import UsageRecord
from tests.e2e.conftest import Pool, download, finished
from tests.e2e.test_traces import spans

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_prefix")]

BATCHABLE = {"width": 64, "height": 64, "steps": 3, "scheduler": "euler"}


def test_waiting_jobs_of_one_key_run_as_a_batch_each_reported_and_metered_alone(
    pool: Pool, settings: Any, tmp_path: Path
) -> None:
    # given four jobs of one batch key and one of another, all waiting before any worker runs,
    # each in a trace of its own
    exported = tmp_path / "spans.jsonl"
    settings.OTEL_EXPORTER = f"file:{exported}"
    pool.tenant.plan.max_concurrent_jobs = 5
    pool.tenant.plan.save()
    batchable = [
        pool.submit(**BATCHABLE, prompt=f"a lighthouse {n}", seed=10 + n, num_outputs=n % 2 + 1)
        for n in range(4)
    ]
    apart = pool.submit(**{**BATCHABLE, "steps": 2}, seed=99)
    # when a worker that batches up to 4 starts on that queue
    pool.start_worker(SDSAAS_GPU_MAX_BATCH="4", SDSAAS_OTEL_EXPORTER=f"file:{exported}")
    jobs = {job_id: finished(pool.client, job_id) for job_id in [*batchable, apart]}
    # then every job succeeded on its first receive, each metered for its own images
    log = pool.log()
    assert {job["status"] for job in jobs.values()} == {"succeeded"}, log
    for job_id in [*batchable, apart]:
        assert pool.deliveries(job_id) == [1], job_id
        images = len(jobs[job_id]["output"])
        assert UsageRecord.objects.filter(job__public_id=job_id).count() == images
    # and some of the four ran in one batch, the other key never with them
    batches = [
        {first, *others.split(", ")}
        for first, others in re.findall(r"job (job_\w+) runs in a batch with ([\w, ]+)", log)
    ]
    assert batches and all(batch <= set(batchable) for batch in batches), log
    # and each image is its own job's, from its own seed
    for n, job_id in enumerate(batchable):
        for index, url in enumerate(jobs[job_id]["output"]):
            record = json.loads(download(url).text["sdsaas"])
            assert (record["job_id"], record["seed"]) == (job_id, 10 + n + index)
    # and each job's worker spans are in its own trace, batched or not (its message's attribute)
    traced = {
        (x["name"], x["attributes"].get("job_id"), x["context"]["trace_id"])
        for x in spans(exported)
    }
    for job_id in [*batchable, apart]:
        trace_id = f"0x{pool.job(job_id).trace_parent.split('-')[1]}"
        assert ("job.inference_s", job_id, trace_id) in traced, job_id
