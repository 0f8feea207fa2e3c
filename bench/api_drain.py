"""`python -m bench.api_drain ENDPOINT QUEUE`: keeps one queue of the local SQS server near-empty.

bench.api's jobs go to a model no GPU worker consumes, so its queue would only fill; and
moto_server's SendMessage takes time in proportion to the messages its queue holds (on the 2-core
machine, 8 ms a send at 300 messages, 40 ms at 1,800), which would measure moto, not the API (SQS
itself takes as long whatever the depth). This process receives and deletes the queue's messages
in batches of ten as they come, about one SQS call for every five jobs.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import boto3
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import DeleteMessageBatchRequestEntryTypeDef


def main() -> None:
    endpoint, name = sys.argv[1:3]
    client = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    while True:  # the queue is created by the first publish to it
        try:
            url = client.get_queue_url(QueueName=name)["QueueUrl"]
            break
        except ClientError:
            time.sleep(0.2)
    print(f"draining {url}", flush=True)
    drained = 0
    while True:
        answer = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = answer.get("Messages", [])
        if messages:
            entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": message["ReceiptHandle"]}
                for i, message in enumerate(messages)
            ]
            client.delete_message_batch(QueueUrl=url, Entries=entries)
            drained += len(messages)
            if drained % 1000 < len(messages):
                print(f"drained {drained}", flush=True)


if __name__ == "__main__":
    main()
