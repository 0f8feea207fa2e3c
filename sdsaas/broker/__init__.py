"""The queue layer: Amazon SQS as Celery's broker.

- `sqs`: the boto3 client, the model queues with their dead-letter queues and attributes, the
  dead-letter sweep's reads, queue depth.
- `transport`: kombu's SQS transport with the fixes this service needs (a stopping worker hands
  back what its last long poll received).

Queue and task names are part of the GPU <-> control contract (`sdsaas.contract`).
"""
