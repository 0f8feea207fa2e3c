"""How a GPU worker rides out S3 or SQS trouble: which errors are transient, and two policies.

- `retry_through_outage`: work the job's outcome depends on (an upload, the final event) waits
  for the endpoint, up to SDSAAS_GPU_OUTAGE_TOLERANCE_S; a job in the middle of its work is not
  thrown away (and run again after the visibility timeout) because S3 was away for a while.
- `skip_during_outage`: work that a later call does anyway (a progress event, a cancel check)
  is skipped.
Any other error is raised at once: retrying cannot help it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from django.conf import settings
from kombu.exceptions import OperationalError

from sdsaas.broker.sqs import is_missing_queue

logger = logging.getLogger(__name__)

THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"}
T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """S3 or SQS trouble that a later try may not meet: unreachable, timeouts, 5xx, throttling,
    a missing queue."""
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        code = exc.response.get("Error", {}).get("Code")
        # A missing queue (deleted, recreated, a local server started anew) is the platform's
        # trouble, never the job's: it is created again.
        return status >= 500 or code in THROTTLING_CODES or is_missing_queue(exc)
    # Not every BotoCoreError: missing credentials or a bad parameter will not heal by waiting.
    return isinstance(
        exc,
        BotoConnectionError | HTTPClientError | OperationalError | ConnectionError | TimeoutError,
    )


def retry_through_outage(what: str, call: Callable[[], T]) -> T:
    """`call()`, tried again through transient errors for up to GPU_OUTAGE_TOLERANCE_S seconds."""
    deadline = time.monotonic() + settings.GPU_OUTAGE_TOLERANCE_S
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            logger.warning("%s failed (%s); trying again in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def skip_during_outage(what: str, call: Callable[[], T], default: T) -> T:
    """`call()`, or `default` after a transient error (a later call will do its work)."""
    try:
        return call()
    except Exception as exc:
        if not is_transient(exc):
            raise
        logger.warning("%s failed: %s", what, exc)
        return default
