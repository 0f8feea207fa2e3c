"""Spot interruption: the two-minute notice stops the worker the way ECS's SIGTERM does.

EC2 writes `spot/instance-action` into the instance metadata about two minutes before it stops
or terminates a spot instance; ECS drains the instance's tasks (SIGTERM) only once it learns of
it, if at all. A thread of the worker asks the metadata (IMDSv2: a session token, then the
path; 404 means no notice) every GPU_SPOT_POLL_S. On a notice it starts the worker's stop with a
grace that ends before the instance does (GPU_STOP_GRACE_S, shortened to the notice's time less
HAND_BACK_S), then sends the process SIGTERM: Celery's warm shutdown takes no new message, the
running job finishes within the grace or is handed back to the queue as its next attempt
(gpu_worker/watchdog.py, tasks.py), and another worker runs it.

On where ECS runs the worker (ECS_AGENT_URI set) unless SDSAAS_GPU_SPOT_POLL_S=0; elsewhere off
unless set. SDSAAS_GPU_IMDS_URL points it at another metadata endpoint (tests use a local one).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import threading
import time

import urllib3
from django.conf import settings

from gpu_worker.watchdog import STOP

logger = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_TTL_S = 21600
# Kept between the end of the grace and the instance's end: the hand-back, the next attempt's
# publish and the events of a job that stops.
HAND_BACK_S = 20
# A metadata service that does not answer is logged at the first failure and every this many.
WARN_EVERY = 60


class MetadataError(Exception):
    """The instance metadata did not answer as documented (asked again at the next poll)."""


class InstanceMetadata:
    """The one client of the instance metadata service (IMDSv2), with short timeouts."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=1.0, read=2.0), retries=False
        )
        self._token: str | None = None
        self._token_until = 0.0

    def spot_action(self) -> dict[str, str] | None:
        """The pending spot interruption ({"action", "time"}), or None."""
        response = self._get(ACTION_PATH)
        if response.status == 401:  # the token expired early: one more try with a new one
            self._token = None
            response = self._get(ACTION_PATH)
        if response.status == 404:
            return None
        if response.status != 200:
            raise MetadataError(f"{ACTION_PATH} answered {response.status}")
        try:
            action = json.loads(response.data)
        except ValueError as exc:
            raise MetadataError(f"{ACTION_PATH} is not JSON") from exc
        if not isinstance(action, dict):
            raise MetadataError(f"{ACTION_PATH} is not an object")
        return {str(k): str(v) for k, v in action.items()}

    def _get(self, path: str) -> urllib3.BaseHTTPResponse:
        try:
            return self._http.request(
                "GET", self.base_url + path, headers={"X-aws-ec2-metadata-token": self._session()}
            )
        except urllib3.exceptions.HTTPError as exc:
            raise MetadataError(f"the instance metadata is unreachable: {exc}") from exc

    def _session(self) -> str:
        if self._token is None or time.monotonic() >= self._token_until:
            try:
                response = self._http.request(
                    "PUT",
                    self.base_url + TOKEN_PATH,
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
                )
            except urllib3.exceptions.HTTPError as exc:
                raise MetadataError(f"the instance metadata is unreachable: {exc}") from exc
            if response.status != 200:
                raise MetadataError(f"{TOKEN_PATH} answered {response.status}")
            self._token = response.data.decode()
            self._token_until = time.monotonic() + TOKEN_TTL_S / 2
        return self._token


def grace_for(action: dict[str, str], *, now: dt.datetime) -> float:
    """The stop grace a notice leaves: the configured one, or less when the instance ends sooner."""
    try:
        ends = dt.datetime.fromisoformat(action["time"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return 0.0  # a notice without a time we can read: hand the job back at once
    if ends.tzinfo is None:  # the metadata's times are UTC, written with a Z; without one too
        ends = ends.replace(tzinfo=dt.UTC)
    left = (ends - now).total_seconds() - HAND_BACK_S
    return max(0.0, min(float(settings.GPU_STOP_GRACE_S), left))


def stop_on_notice(action: dict[str, str]) -> None:
    """Stop this worker as a SIGTERM would, within the grace the notice leaves."""
    grace = grace_for(action, now=dt.datetime.now(dt.UTC))
    logger.warning(
        "spot interruption notice (%s at %s): the worker stops, the running job has %.0fs",
        action.get("action"),
        action.get("time"),
        grace,
    )
    STOP.begin(grace)  # the earlier deadline holds, whether ECS's SIGTERM came first or not
    os.kill(os.getpid(), signal.SIGTERM)


def watch(metadata: InstanceMetadata, poll_s: float, stopped: threading.Event) -> None:
    """Ask for a notice every `poll_s` until one comes (then stop the worker) or `stopped`."""
    failures = 0
    while not stopped.wait(poll_s):
        try:
            action = metadata.spot_action()
        except MetadataError as exc:
            failures += 1
            # Said once in a while: a watch that never reaches the metadata protects nothing.
            level = logging.WARNING if failures % WARN_EVERY == 1 else logging.DEBUG
            logger.log(level, "spot notice check failed (%d in a row): %s", failures, exc)
            continue
        failures = 0
        if action is not None:
            stop_on_notice(action)
            return


def start_watch() -> threading.Event | None:
    """Start this worker process's watch (None when off); set the event to end it."""
    if settings.GPU_SPOT_POLL_S <= 0:
        return None
    stopped = threading.Event()
    metadata = InstanceMetadata(settings.GPU_IMDS_URL)
    thread = threading.Thread(
        target=watch,
        args=(metadata, settings.GPU_SPOT_POLL_S, stopped),
        name="spot-notice",
        daemon=True,
    )
    thread.start()
    logger.info(
        "watching for spot interruption notices every %ss at %s",
        settings.GPU_SPOT_POLL_S,
        settings.GPU_IMDS_URL,
    )
    return stopped
