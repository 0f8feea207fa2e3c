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
import logging
import statistics
from collections import defaultdict
from collections.abc import Iterator
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
        for slug in DiffusionModel.objects.filter(enabled=True).values_list("slug", flat=True):
            pools.add_metric([slug], sizes.get(slug, 0))
            try:
                depth = queue_depth(model_queue_name(slug))
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
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * len(ordered) + 0.5) - 1)]
