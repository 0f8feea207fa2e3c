"""The durable schedule's ends: progress coalesced, a used-up schedule, days of failure, and
redelivery by hand."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from django import db
from django.db import transaction

from integrations.webhooks.models import EndpointNotice, WebhookMessage
from integrations.webhooks.services.dispatch import (
    JITTER,
    MAX_ATTEMPTS,
    RETRY_DELAYS_S,
    messages_dispatch,
    messages_prune,
)
from integrations.webhooks.services.endpoints import message_redeliver, messages_redeliver_failed
from jobs.services import lifecycle
from tests.conftest import requires_postgres
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import run_due, submit, succeed, tenant_with_endpoint

pytestmark = [
    pytest.mark.usefixtures("local_aws", "model"),
    pytest.mark.django_db(transaction=True),
]


def test_progress_is_coalesced_to_one_waiting_message_per_job_and_endpoint(
    receiver: Receiver,
) -> None:
    # given an endpoint subscribed to progress, and a processing job
    tenant, endpoint = tenant_with_endpoint(receiver, ["job.progress"])
    job = submit(tenant)
    lifecycle.job_mark_received(job_public_id=job.public_id, attempt=1)
    lifecycle.job_mark_started(job_public_id=job.public_id, attempt=1, load_s=0.1)
    # when five progress events arrive before the sender runs
    for step in range(1, 6):
        lifecycle.job_mark_progress(job_public_id=job.public_id, attempt=1, step=step, total=30)
    # then one message waits, and it carries the latest progress when sent
    assert WebhookMessage.objects.filter(endpoint=endpoint).count() == 1
    run_due(dt.datetime.now(dt.UTC))
    (sent,) = receiver.received
    assert sent.payload["type"] == "job.progress"
    assert sent.payload["data"]["progress"] == {"step": 5, "total": 30}
    # and once it is delivered, the next progress makes a new one
    lifecycle.job_mark_progress(job_public_id=job.public_id, attempt=1, step=6, total=30)
    assert WebhookMessage.objects.filter(endpoint=endpoint).count() == 2


def exhaust(message: WebhookMessage, start: dt.datetime) -> dt.datetime:
    """Run the scheduler at each due time until the message is settled; the last time."""
    now = start
    run_due(now)
    message.refresh_from_db()
    while message.status == WebhookMessage.Status.PENDING:
        assert message.due_at is not None
        now = message.due_at
        run_due(now)
        message.refresh_from_db()
    return now


def test_a_used_up_schedule_marks_the_endpoint_failing_and_tells_the_tenant_once(
    receiver: Receiver,
) -> None:
    # given a receiver that always answers 500, and two jobs' events
    tenant, endpoint = tenant_with_endpoint(receiver, ["job.succeeded"])
    receiver.default = (500, {})
    succeed(submit(tenant))
    succeed(submit(tenant))
    first, second = WebhookMessage.objects.filter(endpoint=endpoint).order_by("id")
    # when both use up their schedule (about three days)
    start = dt.datetime.now(dt.UTC)
    end = exhaust(first, start)
    exhaust(second, start)
    # then each got MAX_ATTEMPTS tries, and the tenant was told once that the endpoint fails
    for message in (first, second):
        message.refresh_from_db()
        assert (message.status, message.attempts) == ("failed", MAX_ATTEMPTS)
    schedule = dt.timedelta(seconds=sum(RETRY_DELAYS_S))  # 3 days 3 h 35 min, +-10% each
    assert schedule * (1 - JITTER) <= end - start <= schedule * (1 + JITTER)
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.failing_since is not None
    assert list(endpoint.notices.values_list("kind", flat=True)) == ["failing"]


def test_an_endpoint_failing_for_days_is_disabled_with_the_reason(
    receiver: Receiver, settings: Any
) -> None:
    # given an endpoint marked failing six days ago, whose receiver still answers 500
    tenant, endpoint = tenant_with_endpoint(receiver, ["job.succeeded"])
    receiver.default = (500, {})
    start = dt.datetime.now(dt.UTC)
    endpoint.failing_since = start - dt.timedelta(days=6)
    endpoint.save()
    succeed(submit(tenant))
    # when another message uses up its schedule
    exhaust(WebhookMessage.objects.get(endpoint=endpoint), start)
    # then the endpoint is disabled, saying why, and the tenant is told
    endpoint.refresh_from_db()
    assert not endpoint.enabled
    assert endpoint.disabled_reason == "every delivery failed for 5 days"
    assert EndpointNotice.objects.filter(endpoint=endpoint, kind="disabled").count() == 1


def test_a_failed_message_is_delivered_again_by_hand_with_its_webhook_id(
    receiver: Receiver,
) -> None:
    # given a message that failed (its endpoint answered 500 on every attempt)
    tenant, endpoint = tenant_with_endpoint(receiver, ["job.succeeded"])
    receiver.default = (500, {})
    succeed(submit(tenant))
    succeed(submit(tenant))
    messages = list(WebhookMessage.objects.filter(endpoint=endpoint).order_by("id"))
    start = dt.datetime.now(dt.UTC)
    for message in messages:
        exhaust(message, start)
    receiver.default = (204, {})
    # when the tenant redelivers the first, then all failed since the start
    message_redeliver(tenant=tenant, message_id=messages[0].public_id)
    run_due(dt.datetime.now(dt.UTC))
    assert receiver.received[-1].id == messages[0].public_id
    assert (
        messages_redeliver_failed(
            tenant=tenant, endpoint_id=endpoint.public_id, since=start - dt.timedelta(minutes=5)
        )
        == 1
    )
    run_due(dt.datetime.now(dt.UTC))
    # then both are delivered, each under its own webhook-id, and the endpoint recovered
    assert {r.id for r in receiver.received if r.headers} == {m.public_id for m in messages}
    statuses = WebhookMessage.objects.filter(endpoint=endpoint).values_list("status", flat=True)
    assert set(statuses) == {"succeeded"}
    endpoint.refresh_from_db()
    assert endpoint.failing_since is None
    assert list(endpoint.notices.values_list("kind", flat=True)) == ["failing", "recovered"]


def test_the_delivery_log_keeps_settled_messages_for_its_retention_only(
    receiver: Receiver, settings: Any
) -> None:
    tenant, endpoint = tenant_with_endpoint(receiver, ["job.succeeded"])
    succeed(submit(tenant))
    run_due(dt.datetime.now(dt.UTC))
    receiver.default = (500, {})
    succeed(submit(tenant))
    run_due(dt.datetime.now(dt.UTC))  # this one waits for its next attempt
    # a month and a day later, the delivered message is gone with its attempts; the other stays
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=settings.WEBHOOK_LOG_DAYS + 1)
    assert messages_prune(now=later) == 2  # one message, one attempt
    (left,) = WebhookMessage.objects.filter(endpoint=endpoint)
    assert left.status == "pending" and left.log.count() == 1


@requires_postgres
def test_two_dispatches_at_once_never_exceed_a_target_s_concurrency(
    receiver: Receiver, settings: Any
) -> None:
    # given an endpoint with more messages due than its concurrency
    cap = settings.WEBHOOK_TARGET_CONCURRENCY
    tenant, endpoint = tenant_with_endpoint(receiver, ["job.succeeded"])
    now = dt.datetime.now(dt.UTC)
    for _ in range(cap + 2):
        WebhookMessage.objects.create(
            tenant=tenant, endpoint=endpoint, event_type="job.succeeded", event_at=now, due_at=now
        )
    # when one dispatch has chosen its messages and not yet committed, and another runs then
    chosen: dict[str, int] = {}
    first_chose, commit_first = threading.Event(), threading.Event()

    def first() -> None:
        try:
            with transaction.atomic():
                chosen["first"] = messages_dispatch(now=now)
                first_chose.set()
                commit_first.wait(10)
        finally:
            db.connection.close()

    def second() -> None:
        try:
            chosen["second"] = messages_dispatch(now=now)
        finally:
            db.connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert first_chose.wait(10)
    threads[1].start()
    threads[1].join(0.5)  # it waits for the first to commit (or, unserialised, chose already)
    commit_first.set()
    for thread in threads:
        thread.join(10)
    # then together they handed over no more than the concurrency
    assert chosen == {"first": cap, "second": 0}
    sending = WebhookMessage.objects.filter(endpoint=endpoint, status="sending")
    assert sending.count() == cap
