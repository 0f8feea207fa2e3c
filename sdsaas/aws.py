"""boto3 clients of the AWS services the control plane and the workers call (SQS, CloudWatch,
ECS): one per process and configuration. Making one costs milliseconds (a GPU worker asked for
three per job); boto3's clients may be shared between threads, not across a fork."""

from __future__ import annotations

import functools
import os
from typing import Any, Literal

import boto3
from botocore.config import Config
from django.conf import settings

Service = Literal["sqs", "cloudwatch", "ecs"]


def aws_client(
    service: Service, *, endpoint_url: str, connect_timeout: int = 3, attempts: int = 2
) -> Any:
    """A client of `service` in the deployment's region; `endpoint_url` empty for AWS itself."""
    return _client(
        service, settings.AWS_REGION, endpoint_url or None, connect_timeout, attempts, os.getpid()
    )


@functools.cache
def _client(
    service: Service, region: str, endpoint_url: str | None, connect: int, attempts: int, pid: int
) -> Any:
    config = Config(connect_timeout=connect, read_timeout=10, retries={"max_attempts": attempts})
    return boto3.client(service, region_name=region, endpoint_url=endpoint_url, config=config)
