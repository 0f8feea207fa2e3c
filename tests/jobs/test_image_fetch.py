"""The control side of img2img by URL: fetch into S3, then publish; safe to run twice.

A real HTTPS server on loopback (allowed by setting, with the tests' CA), the real local S3 and
SQS; the fetch service runs in this process as the control worker would run it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from integrations.safe_http import FetchError
from jobs.models import Job
from jobs.services.image_fetch import _fail_before_dispatch, job_fetch_input_image
from sdsaas.broker.sqs import control_queue_name, model_queue_name
from sdsaas.contract import TASK_FETCH_INPUT_IMAGE
from tenants.models import CreditPeriod
from tests.support.factories import DiffusionModelFactory, TenantFactory, api_client_for
from tests.support.https import HttpsServer, QuietHandler, Tls, serve_https
from tests.support.images import image_bytes

pytestmark = [pytest.mark.usefixtures("local_aws"), pytest.mark.django_db(transaction=True)]


CAT = image_bytes("PNG", (32, 32), (200, 100, 0))


class Photos(QuietHandler):
    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.path == "/cat.png":
            self.reply(200, CAT, "image/png")
        else:
            self.reply(503 if self.path == "/busy.png" else 404, b"no", "text/plain")


@pytest.fixture
def photos(tls: Tls, settings: Any) -> Iterator[HttpsServer]:
    settings.IMAGE_FETCH_ALLOW_HOSTS = frozenset({"localhost"})
    settings.IMAGE_FETCH_CA_FILE = tls.ca_file
    with serve_https(Photos, tls) as httpd:
        yield httpd


def submit_url(local_aws: Any, url: str) -> Job:
    tenant = TenantFactory()
    DiffusionModelFactory(slug="tiny")
    body = {"model": "tiny", "prompt": "in ink", "image": url, "strength": 0.5}
    response = api_client_for(tenant).post("/v1/jobs", body, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(public_id=response.json()["id"])
    # the API asked the control worker to fetch, and marked that as the job's publish
    assert local_aws.drain_tasks(control_queue_name()) == [
        {"task": TASK_FETCH_INPUT_IMAGE, "kwargs": {"job_pk": job.pk}}
    ]
    assert job.published_at is not None
    return job


def test_the_image_is_stored_under_the_job_and_the_job_published_once(
    local_aws: Any, photos: HttpsServer
) -> None:
    # given a job on an image URL
    job = submit_url(local_aws, f"https://localhost:{photos.port}/cat.png")
    # when the fetch runs, then runs again (a redelivered task, or the sweeper's)
    job_fetch_input_image(job_pk=job.pk, last_try=False)
    job_fetch_input_image(job_pk=job.pk, last_try=False)
    # then the image is in S3 under the job, fetched once, and one GPU message was sent
    job.refresh_from_db()
    assert job.init_image_key == f"tenants/{job.tenant_id}/jobs/{job.public_id}/input.png"
    assert local_aws.client("s3").get_object(Bucket=settings.S3_BUCKET, Key=job.init_image_key)
    assert photos.paths == ["/cat.png"]
    (task,) = local_aws.drain_tasks(model_queue_name("tiny"))
    assert task["kwargs"]["job"]["init_image_key"] == job.init_image_key
    assert job.published_at is not None


def test_a_late_failing_fetch_cannot_fail_a_job_already_dispatched(
    local_aws: Any, photos: HttpsServer
) -> None:
    # given a job whose image was fetched and which went to its GPU queue
    job = submit_url(local_aws, f"https://localhost:{photos.port}/cat.png")
    job_fetch_input_image(job_pk=job.pk, last_try=False)
    # when a duplicate fetch of it fails for good (its fence sees the stored image)
    Job.objects.filter(pk=job.pk).update(
        init_image_url=f"https://localhost:{photos.port}/missing.png"
    )
    _fail_before_dispatch(Job.objects.get(pk=job.pk), "image_fetch_failed", "404")
    # then the job is still on its way, holding its credit
    job.refresh_from_db()
    assert (job.status, job.error_code) == (Job.Status.STARTING, "")
    assert CreditPeriod.objects.get(tenant=job.tenant).reserved == 1


@pytest.mark.parametrize(
    ("path", "last_try"),
    [
        pytest.param("/missing.png", False, id="404-at-once"),
        pytest.param("/busy.png", True, id="503-at-the-last-try"),
    ],
)
def test_a_refused_image_fails_the_job_and_releases_its_credit(
    local_aws: Any, photos: HttpsServer, path: str, last_try: bool
) -> None:
    job = submit_url(local_aws, f"https://localhost:{photos.port}{path}")
    job_fetch_input_image(job_pk=job.pk, last_try=last_try)
    job.refresh_from_db()
    assert (job.status, job.error_code) == (Job.Status.FAILED, "image_fetch_failed")
    assert CreditPeriod.objects.get(tenant=job.tenant).reserved == 0
    assert local_aws.drain_tasks(model_queue_name("tiny")) == []


def test_a_busy_image_host_is_retried_before_the_last_try(
    local_aws: Any, photos: HttpsServer
) -> None:
    job = submit_url(local_aws, f"https://localhost:{photos.port}/busy.png")
    with pytest.raises(FetchError) as caught:
        job_fetch_input_image(job_pk=job.pk, last_try=False)
    assert caught.value.retryable
    job.refresh_from_db()
    assert (job.status, job.init_image_key) == (Job.Status.STARTING, "")
