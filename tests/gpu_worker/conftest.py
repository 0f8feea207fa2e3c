from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from gpu_worker.app import app as gpu_app
from gpu_worker.model_store import ModelStore
from sdsaas.settings import sqs_broker_url
from tests.support.aws import LocalAws
from tests.support.model_store import PART


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


# --- the model store (test_model_store.py, test_model_push.py) ---


@pytest.fixture
def s3(local_aws: LocalAws) -> Any:
    return local_aws.client("s3")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def store(cache_dir: Path, s3: Any) -> ModelStore:
    return ModelStore(cache_dir, lambda: s3, part_size=PART, max_workers=4)


@pytest.fixture
def dest() -> str:
    """A fresh prefix in the test bucket, so tests never see each other's objects."""
    return f"s3://{settings.S3_BUCKET}/models/{uuid.uuid4().hex[:12]}/"
