from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings

from gpu_worker.app import app as gpu_app
from sdsaas.settings import sqs_broker_url
from tests.support.aws import LocalAws


@pytest.fixture(scope="session")
def local_aws(local_aws: LocalAws) -> Iterator[LocalAws]:
    """The session's local SQS and S3, for the GPU workers' Celery app too (events, requeues)."""
    gpu_app.conf.broker_url = sqs_broker_url(local_aws.endpoint_url)
    gpu_app.conf.broker_transport_options = {
        **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        "is_secure": False,
    }
    yield local_aws
    gpu_app.pool.force_close_all()
