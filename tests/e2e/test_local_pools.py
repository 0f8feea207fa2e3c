"""`make run`'s GPU worker pools (sdsaas/local_pools.py) on the real stack: a model with no
worker gets one when a job arrives, its busy worker survives a scale-in, and its pool is back to
zero after the keep-alive. The scaling publisher (jobs/services/scaling.py) runs here between
the pools' passes, as the scheduler would run it; CloudWatch is the local AWS-compatible server."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobs.models import Job
from jobs.services.scaling import pools_publish
from sdsaas.broker.sqs import model_queue_name
from sdsaas.local_pools import LocalPools
from tests.e2e.conftest import LONG_JOB, SHORT_JOB, VISIBILITY_S, Pool, finished
from tests.support.aws import LocalAws

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_prefix")]

KEEP_ALIVE_S = 4
IDLE_S = 1


@pytest.fixture
def pools(pool: Pool, local_aws: LocalAws, settings: Any) -> Iterator[LocalPools]:
    settings.SCALING_KEEP_ALIVE_S = KEEP_ALIVE_S
    settings.SCALING_SCALE_IN_DELAY_S = 1  # the keep-alive, not the delay, holds the last one
    settings.SCALING_METRIC_NAMESPACE = f"e2e/{uuid.uuid4().hex[:8]}"

    def start_worker(name: str, slug: str, env: dict[str, str]) -> Any:
        pool.workers.start_gpu(
            name,
            queues=model_queue_name(slug),
            SDSAAS_SQS_VISIBILITY_TIMEOUT=str(VISIBILITY_S),
            SDSAAS_GPU_PROTECTION_IDLE_S=str(IDLE_S),
            **env,
        )
        return pool.workers.processes[name]

    made = LocalPools(
        local_aws.client("cloudwatch"),
        namespace=settings.SCALING_METRIC_NAMESPACE,
        deployment=settings.SQS_QUEUE_PREFIX,
        start_worker=start_worker,
        stop_worker=lambda name: pool.workers.processes[name].terminate(),
    )
    yield made
    made.close()


def until(
    condition: Callable[[], Any], timeout: float, what: str, step: Callable[[], Any]
) -> float:
    """Run `step` (a pass of the pools, and maybe the publisher) until `condition`; seconds."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        step()
        time.sleep(0.3)
    return time.monotonic() - started


def scale_in_to_zero_now(pools: LocalPools, slug: str) -> None:
    """What a scale-in of the pool to zero publishes (the publisher itself would keep 1)."""
    pools.cloudwatch.put_metric_data(
        Namespace=pools.namespace,
        MetricData=[
            {
                "MetricName": "DesiredWorkers",
                "Dimensions": [
                    {"Name": "Deployment", "Value": pools.deployment},
                    {"Name": "Model", "Value": slug},
                ],
                "Timestamp": dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1),
                "Value": 0.0,
                "StorageResolution": 1,
            }
        ],
    )


def test_a_job_for_an_empty_pool_starts_a_worker_that_no_scale_in_stops_while_busy(
    pool: Pool, pools: LocalPools
) -> None:
    slug = pool.slug
    pools_publish()
    assert pools.follow()[slug] == 0 and pools.size(slug) == 0
    # when a job arrives for the empty pool
    submitted = time.monotonic()
    job_id = pool.submit(**LONG_JOB)
    # then the pool's next pass starts a worker, without waiting for the publisher's next run
    pools.follow()
    assert pools.size(slug) == 1
    [worker] = pools.pools[slug]

    def publish_and_follow() -> None:
        pools_publish()
        pools.follow()

    until(
        lambda: pool.job(job_id).status == Job.Status.PROCESSING,
        120,
        "processing",
        publish_and_follow,
    )
    print(f"scale from zero: job processing {time.monotonic() - submitted:.1f}s after submit")
    # when the pool is scaled in to zero while its worker runs the job
    scale_in_to_zero_now(pools, slug)
    until(lambda: pools.desired().get(slug) == 0, 10, "the scale-in seen", pools.follow)
    # then the busy worker is not stopped: the job ends on it, as attempt 1
    until(lambda: pool.job(job_id).is_final, 120, "the job to end", pools.follow)
    assert worker.process.poll() is None
    job = finished(pool.client, job_id)
    assert (job["status"], job["attempt"]) == ("succeeded", 1), pool.log(worker.name)
    # and once idle (its protection cleared), it is stopped
    until(lambda: pools.size(slug) == 0, 15 + IDLE_S, "the idle worker stopped", pools.follow)
    assert worker.process.wait(timeout=30) == 0


def test_an_idle_pool_goes_back_to_zero_after_the_keep_alive_not_before(
    pool: Pool, pools: LocalPools
) -> None:
    slug = pool.slug

    def publish_and_follow() -> None:
        pools_publish()
        pools.follow()

    # given a pool woken by a job, which it ran
    job_id = pool.submit(**SHORT_JOB)
    until(lambda: pool.job(job_id).is_final, 120, "the job to end", publish_and_follow)
    assert finished(pool.client, job_id)["status"] == "succeeded"
    ended = pool.job(job_id).completed_at
    assert ended is not None and pools.size(slug) == 1
    # when no job comes, then the pool is empty once the keep-alive ran out (not before)
    waited = until(lambda: pools.size(slug) == 0, 60, "the pool at zero", publish_and_follow)
    idle_s = (dt.datetime.now(dt.UTC) - ended).total_seconds()
    print(f"pool at zero {idle_s:.1f}s after its last job (keep-alive {KEEP_ALIVE_S}s)")
    assert idle_s >= KEEP_ALIVE_S and waited > 0
