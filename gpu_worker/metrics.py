"""A GPU worker's Prometheus metrics, served with its other operators' endpoints on
SDSAAS_WORKER_OPS_PORT (sdsaas/worker_ops.py):

- `sdsaas_worker_jobs_total{outcome}`: the runs this process ended, by how they ended (a run
  whose task raised: `failed`, or `handed_back` when the error was transient and the job goes
  back to its queue);
- `sdsaas_worker_pipeline_bytes`: the weights of the pipelines it holds in memory;
- `sdsaas_gpu_memory_bytes{kind}`: CUDA memory `allocated` by tensors and `reserved` by torch's
  allocator (on a CUDA device only).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gpu_worker.loading import CACHE
from sdsaas.contract import RunOutcome

JOBS = Counter("sdsaas_worker_jobs", "Runs this worker ended, by outcome.", ["outcome"])


def count(outcomes: list[RunOutcome]) -> None:
    for outcome in outcomes:
        JOBS.labels(outcome=outcome.value).inc()


def count_raised(runs: int, *, transient: bool) -> None:
    """Runs whose task raised: failed (a bug: reported as internal_error), or handed back."""
    JOBS.labels(outcome="handed_back" if transient else RunOutcome.FAILED.value).inc(runs)


class MemoryCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "sdsaas_worker_pipeline_bytes", "Weights held in memory.", value=CACHE.bytes_held()
        )
        if torch.cuda.is_available():
            memory = GaugeMetricFamily(
                "sdsaas_gpu_memory_bytes", "CUDA memory of this process.", labels=["kind"]
            )
            memory.add_metric(["allocated"], torch.cuda.memory_allocated())
            memory.add_metric(["reserved"], torch.cuda.memory_reserved())
            yield memory


def register() -> None:
    """Add the memory figures to this process's registry (read at each scrape)."""
    REGISTRY.register(MemoryCollector())
