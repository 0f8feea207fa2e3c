"""The scaling publisher (jobs/services/scaling.py) against the local AWS-compatible server:
each model's pool from its queue, its unpublished jobs and its measured job time, kept between
runs, published to CloudWatch (read back here); and scale from zero when a job is published."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.conf import settings

from jobs.models import DiffusionModel, Job, WorkerPool
from jobs.services.dispatch import jobs_publish
from jobs.services.scaling import pools_publish, pools_wake
from jobs.tasks import scaling_publish
from sdsaas.broker.sqs import ensure_model_queue
from tests.support.aws import LocalAws, free_port
from tests.support.factories import DiffusionModelFactory, JobFactory, TenantFactory

pytestmark = [pytest.mark.usefixtures("local_aws"), pytest.mark.django_db(transaction=True)]

# The runs' clock: the metrics are stamped with it, and read back around it.
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _policy(settings: Any) -> None:
    settings.SCALING_ACCEPTABLE_WAIT_S = 40
    settings.SCALING_KEEP_ALIVE_S = 60
    settings.SCALING_SCALE_IN_DELAY_S = 30
    settings.SCALING_MAX_WORKERS = 20
    settings.SCALING_DEFAULT_SECONDS_PER_JOB = 5
    settings.SCALING_METRIC_NAMESPACE = f"sdsaas-test/{settings.SQS_QUEUE_PREFIX}"


def queue_messages(aws: LocalAws, slug: str, *, visible: int, in_flight: int) -> None:
    sqs, url = aws.client("sqs"), ensure_model_queue(slug)
    for n in range(visible + in_flight):
        sqs.send_message(QueueUrl=url, MessageBody=f"job {n}")
    taken = 0
    while taken < in_flight:  # received and held: a worker runs them
        batch = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=min(10, in_flight - taken), VisibilityTimeout=300
        )["Messages"]
        taken += len(batch)


def ran_jobs(model: DiffusionModel, seconds: list[float], *, batch_size: int = 1) -> None:
    for run_s in seconds:
        JobFactory(
            model=model,
            status=Job.Status.SUCCEEDED,
            started_at=NOW - dt.timedelta(seconds=run_s),
            completed_at=NOW,
            metrics={"inference_s": run_s, "batch_size": float(batch_size)},
        )


def metric(aws: LocalAws, name: str, slug: str) -> list[float]:
    """The values of one metric of a model, read back from CloudWatch (1 s periods, in order)."""
    dimensions = [
        {"Name": "Deployment", "Value": settings.SQS_QUEUE_PREFIX},
        {"Name": "Model", "Value": slug},
    ]
    result = aws.client("cloudwatch").get_metric_data(
        MetricDataQueries=[
            {
                "Id": "m",
                "MetricStat": {
                    "Metric": {
                        "Namespace": settings.SCALING_METRIC_NAMESPACE,
                        "MetricName": name,
                        "Dimensions": dimensions,
                    },
                    "Period": 1,
                    "Stat": "Maximum",
                },
            }
        ],
        # From the runs' clock (set when the module was collected) to now (a wake stamps its
        # metric now, which may be long after in a whole suite), and the runs' ahead of it.
        StartTime=NOW - dt.timedelta(minutes=5),
        EndTime=max(dt.datetime.now(dt.UTC), NOW + dt.timedelta(seconds=61))
        + dt.timedelta(minutes=1),
        ScanBy="TimestampAscending",
    )
    return list(result["MetricDataResults"][0]["Values"])


def test_the_pool_counts_visible_in_flight_and_unpublished_jobs_at_the_measured_job_time(
    local_aws: LocalAws,
) -> None:
    # given a model whose last jobs ran 3.5-4.5 s (median 4 s: 10 jobs a worker in 40 s)
    model = DiffusionModelFactory(slug="sd15")
    ran_jobs(model, [3.5, 4.0, 4.0, 4.5, 30.0])  # one cold run does not move the median
    # and 25 messages waiting, 5 being run, 3 admitted jobs not yet published
    queue_messages(local_aws, "sd15", visible=25, in_flight=5)
    for _ in range(3):
        JobFactory(model=model, status=Job.Status.STARTING, published_at=None)
    # when the publisher runs
    [report] = pools_publish(now=NOW)
    # then the pool needs ceil(33 / 10) = 4 workers, and says why
    assert (report.backlog.visible, report.backlog.in_flight, report.backlog.unpublished) == (
        25,
        5,
        3,
    )
    assert (report.seconds_per_job, report.target_backlog_per_worker) == (4.0, 10.0)
    assert (report.needed, report.workers) == (4, 4)
    assert WorkerPool.objects.get(model=model).workers == 4
    # and CloudWatch has the figure and its raw inputs, per model
    assert metric(local_aws, "DesiredWorkers", "sd15") == [4.0]
    assert metric(local_aws, "WorkersNeeded", "sd15") == [4.0]
    assert metric(local_aws, "VisibleMessages", "sd15") == [25.0]
    assert metric(local_aws, "InFlightMessages", "sd15") == [5.0]
    assert metric(local_aws, "UnpublishedJobs", "sd15") == [3.0]
    assert metric(local_aws, "SecondsPerJob", "sd15") == [4.0]
    assert metric(local_aws, "TargetBacklogPerWorker", "sd15") == [10.0]


def test_a_micro_batch_s_run_counts_once_per_job_not_once_for_each(local_aws: LocalAws) -> None:
    # given a model whose last jobs ran in batches of 4, 16 s a batch (4 s a job)
    model = DiffusionModelFactory(slug="sd15")
    ran_jobs(model, [16.0] * 8, batch_size=4)
    queue_messages(local_aws, "sd15", visible=30, in_flight=0)
    # (and a run whose batch size is unreadable counts as one job's)
    JobFactory(
        model=model,
        status=Job.Status.SUCCEEDED,
        started_at=NOW - dt.timedelta(seconds=4),
        completed_at=NOW,
        metrics={"batch_size": None},
    )
    # when the publisher runs, then a job takes 4 s of a worker, not the batch's 16
    [report] = pools_publish(now=NOW)
    assert report.seconds_per_job == 4.0
    assert (report.needed, report.workers) == (3, 3)  # 30 jobs, 10 a worker in 40 s


def test_in_flight_messages_alone_keep_their_workers(local_aws: LocalAws) -> None:
    model = DiffusionModelFactory(slug="sd15")
    queue_messages(local_aws, "sd15", visible=0, in_flight=12)
    [report] = pools_publish(now=NOW)
    # 12 jobs being run at the default 5 s a job (8 per worker in 40 s): 2 workers, not zero
    assert (report.needed, report.workers) == (2, 2)
    assert WorkerPool.objects.get(model=model).workers == 2


def test_a_pool_without_work_sheds_its_workers_after_the_delay_and_the_last_after_the_keep_alive(
    local_aws: LocalAws,
) -> None:
    # given a pool of 3 sized at NOW
    model = DiffusionModelFactory(slug="sd15")
    queue_messages(local_aws, "sd15", visible=15, in_flight=0)
    assert pools_publish(now=NOW)[0].workers == 2
    WorkerPool.objects.filter(model=model).update(workers=3)
    pools_publish(now=NOW)
    # when its queue empties
    sqs = local_aws.client("sqs")
    sqs.purge_queue(QueueUrl=ensure_model_queue("sd15"))
    # then it keeps its size through the scale-in delay, one worker through the keep-alive (the
    # state is kept in the database between runs), and is empty after it
    assert pools_publish(now=NOW + dt.timedelta(seconds=29))[0].workers == 3
    assert pools_publish(now=NOW + dt.timedelta(seconds=30))[0].workers == 1
    assert pools_publish(now=NOW + dt.timedelta(seconds=59))[0].workers == 1
    assert pools_publish(now=NOW + dt.timedelta(seconds=60))[0].workers == 0
    assert metric(local_aws, "WorkersNeeded", "sd15")[-1] == 0


def test_disabled_models_are_not_published_and_each_enabled_one_is(local_aws: LocalAws) -> None:
    DiffusionModelFactory(slug="sd15")
    DiffusionModelFactory(slug="sdxl")
    DiffusionModelFactory(slug="old", enabled=False)
    assert [r.model for r in pools_publish(now=NOW)] == ["sd15", "sdxl"]
    # the beat's task runs the same
    assert scaling_publish() == 2


def ecs_service(aws: LocalAws, settings: Any, slug: str) -> Any:
    """A cluster and the model's GPU service, at desired count 0; the ECS client."""
    settings.SCALING_ECS_CLUSTER = f"{settings.SQS_QUEUE_PREFIX}-cluster"
    ecs = aws.client("ecs")
    ecs.create_cluster(clusterName=settings.SCALING_ECS_CLUSTER)
    ecs.register_task_definition(
        family="gpu", containerDefinitions=[{"name": "gpu", "image": "sdsaas-gpu", "memory": 512}]
    )
    ecs.create_service(
        cluster=settings.SCALING_ECS_CLUSTER,
        serviceName=f"{settings.SQS_QUEUE_PREFIX}-gpu-{slug}",
        taskDefinition="gpu",
        desiredCount=0,
    )
    return ecs


def desired_count(ecs: Any, settings: Any, slug: str) -> int:
    [service] = ecs.describe_services(
        cluster=settings.SCALING_ECS_CLUSTER,
        services=[f"{settings.SQS_QUEUE_PREFIX}-gpu-{slug}"],
    )["services"]
    return int(service["desiredCount"])


def test_on_ecs_each_run_applies_the_pool_to_the_gpu_service_up_and_down(
    local_aws: LocalAws, settings: Any
) -> None:
    # given a model's GPU service at 0, and 25 jobs waiting
    DiffusionModelFactory(slug="sd15")
    ecs = ecs_service(local_aws, settings, "sd15")
    queue_messages(local_aws, "sd15", visible=25, in_flight=0)
    # when the publisher runs, then the service is set to the pool's size (25 jobs / 8 a worker)
    assert pools_publish(now=NOW)[0].workers == 4
    assert desired_count(ecs, settings, "sd15") == 4
    # and once the queue is empty, down to one past the scale-in delay, zero past the keep-alive
    local_aws.client("sqs").purge_queue(QueueUrl=ensure_model_queue("sd15"))
    pools_publish(now=NOW + dt.timedelta(seconds=29))
    assert desired_count(ecs, settings, "sd15") == 4
    pools_publish(now=NOW + dt.timedelta(seconds=31))
    assert desired_count(ecs, settings, "sd15") == 1
    pools_publish(now=NOW + dt.timedelta(seconds=61))
    assert desired_count(ecs, settings, "sd15") == 0


def test_a_job_published_for_an_empty_pool_wakes_it_at_once_and_raises_the_ecs_service(
    local_aws: LocalAws, settings: Any
) -> None:
    # given a model whose pool is empty, served by an ECS service at desired count 0
    model = DiffusionModelFactory(slug="sd15")
    ecs = ecs_service(local_aws, settings, "sd15")
    pools_publish(now=NOW)
    assert WorkerPool.objects.get(model=model).workers == 0
    # when a job for it is admitted and published (the publisher after commit)
    job = JobFactory(model=model, tenant=TenantFactory(), status=Job.Status.STARTING)
    assert jobs_publish(job_ids=[job.pk]) == 1
    # then, before the next run of the scaling publisher, the pool has a worker, CloudWatch
    # says so and the service's desired count is 1
    woken = WorkerPool.objects.get(model=model)
    assert woken.workers == 1
    assert metric(local_aws, "DesiredWorkers", "sd15")[-1] == 1
    assert desired_count(ecs, settings, "sd15") == 1
    # held for the scale-in delay, kept warm for the keep-alive, as the policy's own wake
    assert woken.hold_until is not None and woken.warm_until is not None
    assert (woken.warm_until - woken.hold_until).total_seconds() == pytest.approx(30)
    # and a pool that has workers is left alone
    assert pools_wake(model_ids=[model.pk]) == []


def test_cloudwatch_away_does_not_hold_back_the_wake_of_the_ecs_service(
    local_aws: LocalAws, settings: Any
) -> None:
    # given a model's GPU service at 0, and CloudWatch unreachable (a closed port)
    model = DiffusionModelFactory(slug="sd15")
    ecs = ecs_service(local_aws, settings, "sd15")
    settings.CLOUDWATCH_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"
    job = JobFactory(model=model, tenant=TenantFactory(), status=Job.Status.STARTING)
    # when a job for it is published
    assert jobs_publish(job_ids=[job.pk]) == 1
    # then its service is raised at once all the same
    assert WorkerPool.objects.get(model=model).workers == 1
    assert desired_count(ecs, settings, "sd15") == 1


def test_waking_never_fails_the_publish(local_aws: LocalAws, settings: Any) -> None:
    # given ECS configured with a service that does not exist
    model = DiffusionModelFactory(slug="sd15")
    settings.SCALING_ECS_CLUSTER = "no-such-cluster"
    job = JobFactory(model=model, tenant=TenantFactory(), status=Job.Status.STARTING)
    # when the job is published, then it is, and the pool is woken all the same
    assert jobs_publish(job_ids=[job.pk]) == 1
    assert WorkerPool.objects.get(model=model).workers == 1


def test_a_disabled_model_s_pool_runs_the_jobs_it_accepted_and_otherwise_goes_to_zero(
    local_aws: LocalAws,
) -> None:
    # given a model whose pool has 2 workers, one of them kept warm for 10 more minutes, then
    # disabled (no new job will come)
    model = DiffusionModelFactory(slug="sd15")
    WorkerPool.objects.create(
        model=model, workers=2, hold_until=NOW, warm_until=NOW + dt.timedelta(minutes=10)
    )
    DiffusionModel.objects.filter(pk=model.pk).update(enabled=False)
    # when the publisher runs, then the pool still goes to zero, and is then left alone
    assert [(r.model, r.workers) for r in pools_publish(now=NOW)] == [("sd15", 0)]
    assert pools_publish(now=NOW + dt.timedelta(seconds=10)) == []
    # and a job it accepted before, admitted and published now, wakes it and keeps it sized
    job = JobFactory(model=model, tenant=TenantFactory(), status=Job.Status.STARTING)
    assert jobs_publish(job_ids=[job.pk]) == 1
    assert WorkerPool.objects.get(model=model).workers == 1
    later = NOW + dt.timedelta(seconds=20)
    assert [(r.model, r.workers) for r in pools_publish(now=later)] == [("sd15", 1)]
