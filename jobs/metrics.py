"""The jobs' Prometheus metrics, read at scrape time (the database and SQS are the truth; no
process keeps counters that another process would not see):

- `sdsaas_queue_messages{model, state}`: each model queue's visible and in-flight messages;
- `sdsaas_pool_workers{model}`: the size the scaling policy chose for the model's pool;
- `sdsaas_jobs{status}`: jobs queued, starting and processing;
- `sdsaas_job_failures_window{code}`: jobs failed in the last WINDOW, by `error.code`;
- `sdsaas_job_stage_seconds{model, stage, quantile}`: the median and p95 of each stage (queue,
  load, inference, encode, upload) of the jobs that succeeded in the last WINDOW.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db.models import Count
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from jobs.models import DiffusionModel, Job, WorkerPool
from sdsaas.broker.sqs import model_queue_name, queue_depth

logger = logging.getLogger(__name__)

WINDOW = dt.timedelta(minutes=15)
STAGES = ("queue_s", "load_s", "inference_s", "encode_s", "upload_s")
# A scrape waits this long in all for the queues' depths (read at once, on threads of their own);
# what SQS has not answered by then is left out of that scrape. The scrape holds one of the API's
# sync workers: an SQS that accepts and never answers must not hold it for the clients' timeouts.
SQS_WAIT_S = 2.0


@functools.cache
def _queue_readers(pid: int) -> ThreadPoolExecutor:
    """This process's threads for the queues' depths (none is inherited across a fork); a read
    given up on finishes on its thread, within the SQS client's own timeouts."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"metrics-sqs-{pid}")


class JobsCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        since = timezone.now() - WINDOW
        queues = GaugeMetricFamily(
            "sdsaas_queue_messages", "Messages in a model's queue.", labels=["model", "state"]
        )
        pools = GaugeMetricFamily(
            "sdsaas_pool_workers", "Workers the scaling policy chose.", labels=["model"]
        )
        sizes = dict(WorkerPool.objects.values_list("model__slug", "workers"))
        slugs = list(DiffusionModel.objects.filter(enabled=True).values_list("slug", flat=True))
        readers = _queue_readers(os.getpid())
        depths = {slug: readers.submit(queue_depth, model_queue_name(slug)) for slug in slugs}
        deadline = time.monotonic() + SQS_WAIT_S
        for slug in slugs:
            pools.add_metric([slug], sizes.get(slug, 0))
            try:
                depth = depths[slug].result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                logger.warning(
                    "metrics: the queue of %s did not answer within %ss", slug, SQS_WAIT_S
                )
                continue
            except Exception as exc:  # SQS away: the other figures are still worth a scrape
                logger.warning("metrics: the queue of %s could not be read: %s", slug, exc)
                continue
            queues.add_metric([slug, "visible"], depth.visible + depth.delayed if depth else 0)
            queues.add_metric([slug, "in_flight"], depth.in_flight if depth else 0)
        yield queues
        yield pools

        # The live ones only: counting every job ever made would grow with the table.
        by_status = GaugeMetricFamily("sdsaas_jobs", "Jobs waiting or running.", labels=["status"])
        live = (Job.Status.QUEUED, *Job.IN_FLIGHT)
        counts = dict(
            Job.objects.filter(status__in=live).values_list("status").annotate(n=Count("id"))
        )
        for status in live:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status

        failures = GaugeMetricFamily(
            "sdsaas_job_failures_window",
            f"Jobs failed in the last {int(WINDOW.total_seconds())} s, by error code.",
            labels=["code"],
        )
        failed = (
            Job.objects.filter(status=Job.Status.FAILED, completed_at__gte=since)
            .values_list("error_code")
            .annotate(n=Count("id"))
        )
        for code, n in failed:
            failures.add_metric([code], n)
        yield failures

        stages = GaugeMetricFamily(
            "sdsaas_job_stage_seconds",
            "Seconds of each stage of the jobs that succeeded recently (median and p95).",
            labels=["model", "stage", "quantile"],
        )
        samples: dict[tuple[str, str], list[float]] = defaultdict(list)
        recent = Job.objects.filter(status=Job.Status.SUCCEEDED, completed_at__gte=since)
        for slug, metrics in recent.values_list("model__slug", "metrics"):
            for stage in STAGES:
                value = _seconds((metrics or {}).get(stage))
                if value is not None:
                    samples[(slug, stage)].append(value)
        for (slug, stage), values in sorted(samples.items()):
            stages.add_metric([slug, stage.removesuffix("_s"), "0.5"], statistics.median(values))
            stages.add_metric([slug, stage.removesuffix("_s"), "0.95"], _p95(values))
        yield stages


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _p95(values: list[float]) -> float:
    """The nearest-rank 95th percentile: the ceil(0.95 n)-th smallest."""
    ordered = sorted(values)
    return ordered[-(-95 * len(ordered) // 100) - 1]  # integer ceil: no float rounding
