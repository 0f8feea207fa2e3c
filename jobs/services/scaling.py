"""The scaling publisher: each model's GPU pool sized by the policy (jobs/scaling.py) and
published to CloudWatch, and scale from zero at once.

Every SCALING_PERIOD_S (`pools_publish`, on the beat scheduler), per enabled model (and per
disabled one while it has workers or jobs in flight: the jobs it accepted still run):

- the backlog: its queue's visible (and delayed) and in-flight messages (SQS attributes) and its
  admitted jobs not yet published (the database);
- seconds per job: the median run (started -> completed) of its last 50 succeeded jobs, a run
  of a micro-batch divided by its `batch_size` (its jobs share the worker for that long);
- the pool: `ScalingPolicy.next_pool`, kept in `WorkerPool` between runs (its size, the scale-in
  delay and the keep-alive of its warm worker);
- CloudWatch, namespace SCALING_METRIC_NAMESPACE, dimensions Deployment (the queue prefix) and
  Model, high resolution (1 s): `DesiredWorkers` (the pool's size), `WorkersNeeded` (the
  formula, without the scale-in delay and the keep-alive), and the raw inputs
  `VisibleMessages`, `InFlightMessages`, `UnpublishedJobs`, `SecondsPerJob`,
  `TargetBacklogPerWorker`. ECS service auto scaling acts on
  `DesiredWorkers` (deploy/terraform/); the local stack's pools follow it too (sdsaas/devstack.py).

On ECS (SDSAAS_SCALING_ECS_CLUSTER set) each run also sets every GPU service's desired count
to its pool's size (UpdateService, where it differs). Application Auto Scaling's target tracking
on the same metric (deploy/terraform/) is the backstop, not the actuator: its alarms need three
one-minute datapoints to scale out and fifteen to scale in, which would hold workers for a
quarter of an hour after every burst (bench/scaling_sim.py's GPU-hours are those of this
policy applied every 10 s). ECS stops only unprotected tasks when a count drops, so a busy
worker is never stopped.

Scale from zero does not wait for the next run: when jobs are published for a model whose pool
is empty (`pools_wake`, called by the publisher after SQS took them), the pool becomes one
worker, `DesiredWorkers` 1 is published at once and, on ECS, the model's service's desired count
is raised to 1. Best effort: a failure is logged, and the next run publishes the pool again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from jobs.models import DiffusionModel, Job, WorkerPool
from jobs.scaling import Backlog, PoolState, ScalingPolicy, seconds_per_job
from sdsaas.aws import aws_client
from sdsaas.broker.sqs import model_queue_name, queue_depth

logger = logging.getLogger(__name__)

RECENT_JOBS = 50
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class PoolReport:
    """What one run decided for a model's pool."""

    model: str
    backlog: Backlog
    seconds_per_job: float
    target_backlog_per_worker: float
    needed: int
    workers: int  # the pool's size, scale-in delay and keep-alive included


def scaling_policy() -> ScalingPolicy:
    return ScalingPolicy(
        acceptable_wait_s=settings.SCALING_ACCEPTABLE_WAIT_S,
        default_seconds_per_job=settings.SCALING_DEFAULT_SECONDS_PER_JOB,
        keep_alive_s=settings.SCALING_KEEP_ALIVE_S,
        scale_in_delay_s=settings.SCALING_SCALE_IN_DELAY_S,
        max_workers=settings.SCALING_MAX_WORKERS,
    )


def pools_publish(*, now: dt.datetime | None = None) -> list[PoolReport]:
    """Size every enabled model's pool, publish the metrics (one PutMetricData per 140 models)
    and, on ECS, apply the sizes to the GPU services. A model whose queue SQS cannot tell about
    now is left for the next run. A disabled model takes no new job, but the jobs it accepted
    still run: its pool is sized while it has workers or jobs in flight."""
    now = now or timezone.now()
    policy = scaling_policy()
    unpublished = dict(
        Job.objects.filter(status=Job.Status.STARTING, published_at__isnull=True)
        .values_list("model_id")
        .annotate(n=Count("id"))
    )
    reports = []
    in_flight = Job.objects.filter(status__in=Job.IN_FLIGHT).values("model_id")
    pooled = DiffusionModel.objects.filter(
        Q(enabled=True) | Q(pool__workers__gt=0) | Q(pk__in=in_flight)
    )
    for model in pooled.order_by("slug"):
        try:
            depth = queue_depth(model_queue_name(model.slug))
        except Exception as exc:
            logger.warning("scaling: the queue of %s could not be read: %s", model.slug, exc)
            continue
        backlog = Backlog(
            visible=(depth.visible + depth.delayed) if depth else 0,
            in_flight=depth.in_flight if depth else 0,
            unpublished=unpublished.get(model.pk, 0),
        )
        per_job = seconds_per_job(_recent_runs(model), default=policy.default_seconds_per_job)
        needed = policy.workers_needed(backlog, seconds_per_job=per_job)
        workers = _pool_next(model, policy, needed=needed, now=now)
        reports.append(
            PoolReport(
                model.slug,
                backlog,
                per_job,
                policy.target_backlog_per_worker(per_job),
                needed,
                workers,
            )
        )
    try:
        _put_metrics([datum for report in reports for datum in _metric_data(report, now)])
    except Exception as exc:  # CloudWatch away: the sizes are applied all the same
        logger.warning("scaling: the metrics could not be published now: %s", exc)
    # The sizes as they are now: a wake since this run read a pool must not be undone.
    sizes = dict(
        WorkerPool.objects.filter(model__slug__in=[r.model for r in reports]).values_list(
            "model__slug", "workers"
        )
    )
    _ecs_apply(sizes)
    return reports


def pools_wake(*, model_ids: Iterable[int]) -> list[str]:
    """Scale from zero: the pools of these models that were empty get one worker now. Their
    slugs. Called after a publish (of a disabled model's too: a job it accepted before still
    runs); never raises (the next `pools_publish` sizes them anyway)."""
    now = timezone.now()
    woke = _pool_fields(scaling_policy().next_pool(PoolState(), needed=1, now=_seconds(now)))
    woken: list[str] = []
    try:
        # One statement while the pools have workers, the common case.
        awake = set(
            WorkerPool.objects.filter(model_id__in=set(model_ids), workers__gt=0).values_list(
                "model_id", flat=True
            )
        )
        for model in DiffusionModel.objects.filter(pk__in=set(model_ids) - awake):
            wakes = WorkerPool.objects.filter(model=model, workers=0).update(**woke)
            if not wakes:
                _, wakes = WorkerPool.objects.get_or_create(model=model, defaults=woke)
            if wakes:
                woken.append(model.slug)
    except Exception as exc:
        logger.warning("scaling: could not wake the pools of %s now: %s", woken or "", exc)
    if not woken:
        return woken
    # The services first: CloudWatch away must not hold the workers back (it never raises).
    _ecs_apply(dict.fromkeys(woken, 1), raise_only=True)
    try:
        _put_metrics([_datum("DesiredWorkers", slug, 1, now) for slug in woken])
    except Exception as exc:
        logger.warning("scaling: the metrics of the woken pools could not be published: %s", exc)
    logger.info("scaling: woke the empty pools of %s", ", ".join(woken))
    return woken


def _recent_runs(model: DiffusionModel) -> list[float]:
    runs = (
        Job.objects.filter(
            model=model,
            status=Job.Status.SUCCEEDED,
            completed_at__isnull=False,
            started_at__isnull=False,
        )
        .order_by("-completed_at")
        .values_list("started_at", "completed_at", "metrics")[:RECENT_JOBS]
    )
    return [
        (done - started).total_seconds() / _batch_size(metrics)
        for started, done, metrics in runs
        if started and done
    ]


def _batch_size(metrics: Any) -> float:
    """How many jobs shared the run (the worker's `batch_size`; 1 when absent or not a count)."""
    size = metrics.get("batch_size") if isinstance(metrics, dict) else None
    return float(size) if isinstance(size, int | float) and size >= 1 else 1.0


def _pool_next(
    model: DiffusionModel, policy: ScalingPolicy, *, needed: int, now: dt.datetime
) -> int:
    with transaction.atomic():
        WorkerPool.objects.get_or_create(model=model)
        pool = WorkerPool.objects.select_for_update().get(model=model)
        state = PoolState(
            workers=pool.workers,
            hold_until=_seconds(pool.hold_until or EPOCH),
            # A disabled model keeps no warm worker: no job will come for it.
            warm_until=_seconds(pool.warm_until or EPOCH) if model.enabled else 0.0,
        )
        state = policy.next_pool(state, needed=needed, now=_seconds(now))
        fields = _pool_fields(state)
        for name, value in fields.items():
            setattr(pool, name, value)
        pool.save(update_fields=[*fields, "updated_at"])
    return state.workers


def _pool_fields(state: PoolState) -> dict[str, Any]:
    """A `PoolState` as `WorkerPool`'s fields."""
    return {
        "workers": state.workers,
        "hold_until": EPOCH + dt.timedelta(seconds=state.hold_until),
        "warm_until": EPOCH + dt.timedelta(seconds=state.warm_until),
    }


def _seconds(at: dt.datetime) -> float:
    return (at - EPOCH).total_seconds()


def _metric_data(report: PoolReport, now: dt.datetime) -> list[dict[str, Any]]:
    figures = {
        "DesiredWorkers": report.workers,
        "WorkersNeeded": report.needed,
        "VisibleMessages": report.backlog.visible,
        "InFlightMessages": report.backlog.in_flight,
        "UnpublishedJobs": report.backlog.unpublished,
        "SecondsPerJob": report.seconds_per_job,
        "TargetBacklogPerWorker": report.target_backlog_per_worker,
    }
    return [_datum(name, report.model, value, now) for name, value in figures.items()]


def _datum(name: str, slug: str, value: float, now: dt.datetime) -> dict[str, Any]:
    unit = "Seconds" if name == "SecondsPerJob" else "Count"
    return {
        "MetricName": name,
        "Dimensions": [
            {"Name": "Deployment", "Value": settings.SQS_QUEUE_PREFIX},
            {"Name": "Model", "Value": slug},
        ],
        "Timestamp": now,
        "Value": float(value),
        "Unit": unit,
        "StorageResolution": 1,
    }


def _put_metrics(data: list[dict[str, Any]]) -> None:
    for start in range(0, len(data), 1000):  # PutMetricData's bound per call
        cloudwatch_client().put_metric_data(
            Namespace=settings.SCALING_METRIC_NAMESPACE, MetricData=data[start : start + 1000]
        )


def _ecs_apply(pools: dict[str, int], *, raise_only: bool = False) -> None:
    """Set each model's ECS service's desired count to its pool's size (`raise_only`: only where
    it is below). ECS stops only unprotected tasks when a count drops, so a busy worker is never
    stopped (gpu_worker/protection.py). Nothing without SCALING_ECS_CLUSTER."""
    if not settings.SCALING_ECS_CLUSTER or not pools:
        return
    try:
        _ecs_resize(pools, raise_only=raise_only)
    except Exception as exc:  # the next run applies the sizes again
        logger.warning("scaling: the GPU services could not be resized now: %s", exc)


def _ecs_resize(pools: dict[str, int], *, raise_only: bool) -> None:
    ecs = ecs_client()
    names = {
        settings.SCALING_ECS_SERVICE.format(prefix=settings.SQS_QUEUE_PREFIX, slug=slug): workers
        for slug, workers in pools.items()
    }
    listed = list(names)
    for start in range(0, len(listed), 10):  # DescribeServices takes at most 10
        answer = ecs.describe_services(
            cluster=settings.SCALING_ECS_CLUSTER, services=listed[start : start + 10]
        )
        for failure in answer.get("failures", []):
            logger.warning("scaling: no ECS service %s: %s", failure.get("arn"), failure)
        for service in answer["services"]:
            wanted = names[service["serviceName"]]
            current = service["desiredCount"]
            if service.get("status") != "ACTIVE":
                continue  # being deleted: nothing to size
            if wanted > current or (wanted < current and not raise_only):
                try:
                    ecs.update_service(
                        cluster=settings.SCALING_ECS_CLUSTER,
                        service=service["serviceName"],
                        desiredCount=wanted,
                    )
                except Exception as exc:  # the others are sized all the same
                    logger.warning("scaling: %s not resized: %s", service["serviceName"], exc)


def cloudwatch_client() -> Any:
    return aws_client("cloudwatch", endpoint_url=settings.CLOUDWATCH_ENDPOINT_URL)


def ecs_client() -> Any:
    return aws_client("ecs", endpoint_url=settings.ECS_ENDPOINT_URL)
