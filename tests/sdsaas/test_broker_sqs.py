"""Who owns a model queue's attributes: the application locally, Terraform in AWS."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sdsaas.broker.sqs import ensure_model_queue, forget_queues, is_missing_queue, model_queue_name
from sdsaas.contract import dead_letter_queue_name

pytestmark = pytest.mark.usefixtures("local_aws")


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    forget_queues()
    yield
    forget_queues()


def attributes(local_aws: Any, name: str) -> dict[str, str]:
    sqs = local_aws.client("sqs")
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    found: dict[str, str] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
        "Attributes"
    ]
    return found


def test_the_application_creates_a_model_queue_and_enforces_its_attributes(
    local_aws: Any, settings: Any
) -> None:
    # given a model queue created by hand with another timeout and no redrive
    local_aws.client("sqs").create_queue(
        QueueName=model_queue_name("owned"), Attributes={"VisibilityTimeout": "17"}
    )
    # when the application, owner of the queues, ensures it
    ensure_model_queue("owned")
    # then it has the settings' timeout and a redrive to its dead-letter queue
    found = attributes(local_aws, model_queue_name("owned"))
    assert found["VisibilityTimeout"] == str(settings.SQS_VISIBILITY_TIMEOUT)
    redrive = json.loads(found["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(
        dead_letter_queue_name(model_queue_name("owned"))
    )


def test_with_terraform_the_owner_the_application_only_looks_queues_up(
    local_aws: Any, settings: Any
) -> None:
    settings.SQS_MANAGE_QUEUES = False
    # given a queue Terraform created with its own attributes
    local_aws.client("sqs").create_queue(
        QueueName=model_queue_name("terraformed"), Attributes={"VisibilityTimeout": "17"}
    )
    # when the application ensures it, then it gets its URL and changes nothing
    assert ensure_model_queue("terraformed").endswith(f"/{model_queue_name('terraformed')}")
    found = attributes(local_aws, model_queue_name("terraformed"))
    assert found["VisibilityTimeout"] == "17" and "RedrivePolicy" not in found
    # and a queue Terraform did not create is not created: the publish fails (and is retried)
    with pytest.raises(ClientError) as missing:
        ensure_model_queue("not-in-terraform")
    assert is_missing_queue(missing.value)
    assert local_aws.queue_url(model_queue_name("not-in-terraform")) is None
