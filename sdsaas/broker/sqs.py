"""SQS queues of the model pools, their dead-letter queues, depths and dead letters.

One owner of the queues and their attributes per environment (SDSAAS_SQS_MANAGE_QUEUES):
- the application (the default; the local stack and tests): the control plane creates each model
  queue with its dead-letter queue on first publish and enforces its visibility timeout and
  redrive policy (kombu sets attributes only when it creates a queue, so it does it itself);
- Terraform (AWS: its `control_plane_environment` output sets the variable to false): the
  application only looks queues up and never sets an attribute. A model's queue must exist
  before its first job: add the model's slug to Terraform's `models` before enabling it.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from django.conf import settings

from sdsaas import contract
from sdsaas.aws import aws_client
from sdsaas.contract import dead_letter_queue_name

logger = logging.getLogger(__name__)


def sqs_client(*, fail_fast: bool = False) -> Any:
    """A boto3 SQS client; `fail_fast` for calls on a request's path (one try, short connect)."""
    if fail_fast:
        return aws_client(
            "sqs",
            endpoint_url=settings.SQS_ENDPOINT_URL,
            connect_timeout=settings.PUBLISH_CONNECT_TIMEOUT,
            attempts=1,
        )
    return aws_client("sqs", endpoint_url=settings.SQS_ENDPOINT_URL)


def control_queue_name() -> str:
    """This deployment's control queue (Celery's default queue)."""
    return contract.control_queue_name(settings.SQS_QUEUE_PREFIX)


def webhooks_queue_name() -> str:
    """This deployment's queue of the webhook senders."""
    return contract.webhooks_queue_name(settings.SQS_QUEUE_PREFIX)


def discord_queue_name() -> str:
    """This deployment's queue of the Discord senders."""
    return contract.discord_queue_name(settings.SQS_QUEUE_PREFIX)


def model_queue_name(model_slug: str) -> str:
    """This deployment's queue of one base model's GPU pool."""
    return contract.model_queue_name(settings.SQS_QUEUE_PREFIX, model_slug)


@functools.cache
def _ensure_queue(name: str, visibility_timeout: int, max_receives: int, manage: bool) -> str:
    # On the publish path, after an API request's commit: while SQS is away this must fail as
    # fast as the publish itself would (the sweeper publishes later); success is cached.
    client = sqs_client(fail_fast=True)
    if not manage:  # Terraform's: a missing queue raises (the publish is retried by the sweeper)
        return str(client.get_queue_url(QueueName=name)["QueueUrl"])
    dlq_url = client.create_queue(
        QueueName=dead_letter_queue_name(name),
        Attributes={"MessageRetentionPeriod": str(14 * 24 * 3600)},
    )["QueueUrl"]
    dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    attributes = {
        "VisibilityTimeout": str(visibility_timeout),
        "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)}
        ),
    }
    try:
        url = client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except client.exceptions.QueueNameExists:  # created with other attributes: enforce ours
        url = client.get_queue_url(QueueName=name)["QueueUrl"]
        client.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return str(url)


def ensure_model_queue(model_slug: str) -> str:
    """The model's queue URL; when the application owns the queues, after making sure it exists
    with its DLQ, redrive and timeout.

    Cached per process: after SQS said a queue does not exist, call `forget_queues` first.
    """
    return _ensure_queue(
        model_queue_name(model_slug),
        settings.SQS_VISIBILITY_TIMEOUT,
        settings.SQS_MAX_RECEIVES,
        settings.SQS_MANAGE_QUEUES,
    )


# The JSON protocol's code and the query protocol's (kept by botocore as QueryErrorCode).
MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


def is_missing_queue(exc: BaseException) -> bool:
    """SQS answered that the queue does not exist: deleted, or a local server started anew.

    The platform's trouble, never a job's: recreate the queue and send again.
    """
    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    return bool({error.get("Code"), error.get("QueryErrorCode")} & MISSING_QUEUE_CODES)


def forget_queues(connection: Any = None) -> None:
    """Forget the queues this process believes exist, so that the next use creates them again.

    Clears `ensure_model_queue`'s cache and, given a kombu connection, the queue URLs its SQS
    transport cached (kombu would otherwise send to the deleted queue's URL for ever).
    """
    _ensure_queue.cache_clear()
    cache = getattr(getattr(connection, "transport", None), "_queue_cache", None)
    if isinstance(cache, dict):
        cache.clear()


@dataclass(frozen=True)
class QueueDepth:
    """SQS's approximate counts of a queue (they may lag the truth by about a minute)."""

    visible: int
    in_flight: int  # received and not yet deleted: a worker holds it, or it awaits redelivery
    delayed: int

    @property
    def total(self) -> int:
        return self.visible + self.in_flight + self.delayed


def queue_depth(queue_name: str) -> QueueDepth | None:
    """The queue's message counts; None when the queue does not exist. Other errors raise."""
    client = sqs_client()
    try:
        url = client.get_queue_url(QueueName=queue_name)["QueueUrl"]
        attributes = client.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
    except ClientError as exc:
        if is_missing_queue(exc):
            return None
        raise
    return QueueDepth(
        visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
        in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        delayed=int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
    )


def decode_task(body: str) -> tuple[str, dict[str, Any]]:
    """(task name, kwargs) of a Celery task message as kombu's SQS transport stores it."""
    envelope = json.loads(base64.b64decode(body))
    _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    return str(envelope["headers"]["task"]), dict(kwargs)


@dataclass(frozen=True)
class DeadLetter:
    queue_url: str
    receipt_handle: str
    kwargs: dict[str, Any]  # empty for a message that is no task of ours: delete it


def receive_dead_letters(model_slug: str, limit: int = 10) -> list[DeadLetter]:
    """Up to `limit` dead-lettered messages of a model queue, with their task kwargs."""
    client = sqs_client()
    dlq = dead_letter_queue_name(model_queue_name(model_slug))
    try:
        url = client.get_queue_url(QueueName=dlq)["QueueUrl"]
    except client.exceptions.QueueDoesNotExist:
        return []
    messages = client.receive_message(
        QueueUrl=url, MaxNumberOfMessages=min(limit, 10), VisibilityTimeout=60
    ).get("Messages", [])
    letters = []
    for message in messages:
        try:
            kwargs = decode_task(message["Body"])[1]
        except (ValueError, KeyError, TypeError):
            logger.warning("dropping an undecodable dead letter from %s", dlq)
            kwargs = {}
        letters.append(DeadLetter(str(url), message["ReceiptHandle"], kwargs))
    return letters


def delete_dead_letter(letter: DeadLetter) -> None:
    sqs_client().delete_message(QueueUrl=letter.queue_url, ReceiptHandle=letter.receipt_handle)
