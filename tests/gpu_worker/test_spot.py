"""The spot interruption notice (gpu_worker/spot.py): read from a loopback IMDSv2 stand-in, and
the stop grace it leaves. The worker's stop on a notice runs end to end in
tests/e2e/test_elastic_workers.py."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gpu_worker.spot import HAND_BACK_S, InstanceMetadata, MetadataError, grace_for
from gpu_worker.watchdog import StopDeadline
from tests.support.aws_endpoints import FakeImds


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    with FakeImds() as fake:
        yield fake


def test_no_notice_is_none_and_a_notice_is_its_action_and_time(imds: FakeImds) -> None:
    metadata = InstanceMetadata(imds.url)
    assert metadata.spot_action() is None
    imds.notice(in_s=120)
    action = metadata.spot_action()
    assert action is not None and action["action"] == "terminate"
    assert action == imds.action
    # one session token for both asks (IMDSv2), sent with each
    assert len(imds.recorded("PUT", "/latest/api/token")) == 1
    [token] = imds.tokens
    asks = imds.recorded("GET", FakeImds.ACTION)
    assert [c.headers["x-aws-ec2-metadata-token"] for c in asks] == [token, token]


def test_a_token_the_service_no_longer_knows_is_replaced(imds: FakeImds) -> None:
    metadata = InstanceMetadata(imds.url)
    assert metadata.spot_action() is None
    imds.tokens.clear()  # expired on the service's side
    imds.notice(in_s=120)
    assert metadata.spot_action() is not None
    assert len(imds.recorded("PUT", "/latest/api/token")) == 2


def test_an_unreachable_service_is_a_metadata_error() -> None:
    with FakeImds() as gone:
        url = gone.url
    with pytest.raises(MetadataError, match="unreachable"):
        InstanceMetadata(url).spot_action()


@pytest.mark.parametrize(
    ("in_s", "grace_s"),
    [(120, 25), (40, 40 - HAND_BACK_S), (HAND_BACK_S - 5, 0)],
    ids=["two minutes: the configured grace", "sooner: what is left", "too late: at once"],
)
def test_the_grace_ends_before_the_instance_does(
    in_s: float, grace_s: float, settings: Any
) -> None:
    settings.GPU_STOP_GRACE_S = 25
    now = dt.datetime(2026, 11, 29, 12, 0, 0, tzinfo=dt.UTC)
    at = (now + dt.timedelta(seconds=in_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert grace_for({"action": "terminate", "time": at}, now=now) == grace_s


def test_a_notice_without_a_readable_time_hands_the_job_back_at_once(settings: Any) -> None:
    now = dt.datetime(2026, 11, 29, 12, 0, 0, tzinfo=dt.UTC)
    assert grace_for({"action": "stop"}, now=now) == 0
    assert grace_for({"action": "stop", "time": "soon"}, now=now) == 0


def test_a_notice_time_written_without_a_zone_is_read_as_utc(settings: Any) -> None:
    settings.GPU_STOP_GRACE_S = 25
    now = dt.datetime(2026, 11, 29, 12, 0, 0, tzinfo=dt.UTC)
    assert grace_for({"action": "terminate", "time": "2026-11-29T12:00:40"}, now=now) == (
        40 - HAND_BACK_S
    )


def test_a_notice_after_ecs_s_sigterm_shortens_the_stop_to_its_own_grace() -> None:
    # given a worker stopping with ECS's long grace (its SIGTERM came first)
    stop = StopDeadline()
    stop.begin(110)
    # when a spot notice then leaves less, the earlier deadline holds; a later one changes nothing
    stop.begin(30)
    assert stop.at is not None and stop.at - time.monotonic() <= 30
    stop.begin(110)
    assert stop.at - time.monotonic() <= 30
