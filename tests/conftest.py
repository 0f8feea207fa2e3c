from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.signals import setting_changed
from django.db import connection
from rest_framework.test import APIClient

from sdsaas.celery import app as celery_app
from sdsaas.celery import publisher_pool
from sdsaas.settings import sqs_broker_url
from tests.support.aws import LocalAws
from tests.support.factories import DiffusionModelFactory, TenantFactory, api_client_for
from tests.support.https import Tls, make_tls
from tests.support.webhook_receiver import Receiver, webhook_receiver


def pytest_report_header() -> str:
    return f"database: {settings.DATABASES['default']['ENGINE']}"


@pytest.fixture(scope="session")
def local_aws() -> Iterator[LocalAws]:
    """moto_server for SQS, S3, CloudWatch and ECS; the app's broker, storage and scaling
    publisher point at it for the session."""
    aws = LocalAws()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[name] = "local"  # the test process signs S3 and SQS calls to moto
    settings.SQS_ENDPOINT_URL = aws.endpoint_url
    settings.CLOUDWATCH_ENDPOINT_URL = aws.endpoint_url
    settings.ECS_ENDPOINT_URL = aws.endpoint_url
    settings.STORAGES["default"]["OPTIONS"]["endpoint_url"] = aws.endpoint_url
    # A storage built before this point kept the old endpoint: have Django build it anew.
    setting_changed.send(sender=None, setting="STORAGES", value=settings.STORAGES, enter=True)
    celery_app.conf.broker_url = sqs_broker_url(aws.endpoint_url)
    celery_app.conf.broker_transport_options = {
        **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        "is_secure": False,
    }
    aws.client("s3").create_bucket(Bucket=settings.S3_BUCKET)
    yield aws
    celery_app.pool.force_close_all()
    publisher_pool().force_close_all()
    aws.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test pipeline, built (random weights, diffusers layout) once per session."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    subprocess.run(
        [sys.executable, "-m", "gpu_worker.build_model", "--arch", "tiny", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """The CA and certificate of the tests' HTTPS servers (localhost)."""
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True)
def _queue_prefix(settings: Any) -> None:
    """Each test gets its own queues, so no test reads another one's messages; and the test
    process publishes admitted jobs itself, so a test reads its queue right after a submit (the
    background publisher has tests of its own; the processes of tests/e2e/ use it)."""
    settings.SQS_QUEUE_PREFIX = f"t{uuid.uuid4().hex[:10]}"
    settings.PUBLISH_IN_BACKGROUND = False


@pytest.fixture
def tenant(db: None):  # type: ignore[no-untyped-def]
    return TenantFactory()


@pytest.fixture
def other_tenant(db: None):  # type: ignore[no-untyped-def]
    return TenantFactory()


@pytest.fixture
def model(db: None):  # type: ignore[no-untyped-def]
    return DiffusionModelFactory(slug="tiny")


@pytest.fixture
def client(tenant) -> APIClient:  # type: ignore[no-untyped-def]
    return api_client_for(tenant)


requires_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs PostgreSQL row locks and concurrent transactions; set DATABASE_URL",
)


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    """A webhook receiver that verifies with `standardwebhooks`, reachable over plain http."""
    with webhook_receiver() as receiver:
        settings.WEBHOOK_ALLOW_HOSTS = frozenset({receiver.host})
        yield receiver
