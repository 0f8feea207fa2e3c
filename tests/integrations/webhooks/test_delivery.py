"""Webhook delivery end to end: real HTTP on loopback to a receiver that verifies with
`standardwebhooks`, a clock the test controls for the schedule, real S3 for the images."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import urllib.request
from typing import Any

import pytest
from cryptography.fernet import Fernet

from integrations.webhooks.models import (
    EndpointNotice,
    JobWebhookSecret,
    WebhookEndpoint,
    WebhookMessage,
)
from integrations.webhooks.services.delivery import message_deliver
from integrations.webhooks.services.dispatch import (
    MAX_ATTEMPTS,
    RETRY_DELAYS_S,
    SENDING_LEASE,
    messages_dispatch,
)
from integrations.webhooks.services.endpoints import (
    endpoint_create,
    endpoint_rotate_secret,
    job_secret_issue,
)
from jobs.models import Job
from sdsaas.errors import InvalidInput
from tests.integrations.safe_http.support import FakeDns
from tests.support.factories import PlanFactory, TenantFactory, api_client_for
from tests.support.images import image_bytes
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import run_due, submit, succeed, tenant_with_endpoint

pytestmark = [
    pytest.mark.usefixtures("local_aws", "model"),
    pytest.mark.django_db(transaction=True),
]


def test_a_succeeded_job_is_delivered_once_per_subscribed_endpoint_and_verifies(
    receiver: Receiver,
) -> None:
    # given two endpoints subscribed to job.succeeded and one only to job.failed
    tenant, _ = tenant_with_endpoint(receiver, ["job.succeeded"], "/a")
    _, secret = endpoint_create(
        tenant=tenant, url=receiver.url("/b"), events=["job.succeeded", "job.started"]
    )
    receiver.secrets.append(secret)
    endpoint_create(tenant=tenant, url=receiver.url("/c"), events=["job.failed"])
    # when a job succeeds and the due messages are sent
    job = submit(tenant)
    succeed(job)
    assert set(run_due(dt.datetime.now(dt.UTC))) == {"succeeded"}
    # then each subscribed endpoint got its verified events, and /c nothing
    by_path = sorted((r.path, r.payload["type"]) for r in receiver.received)
    assert by_path == [("/a", "job.succeeded"), ("/b", "job.started"), ("/b", "job.succeeded")]
    assert all(len(r.verified_by) == 1 for r in receiver.received)
    succeeded = [r for r in receiver.received if r.payload["type"] == "job.succeeded"]
    assert {r.payload["data"]["id"] for r in succeeded} == {job.public_id}
    assert all(r.payload["data"]["status"] == "succeeded" for r in succeeded)
    assert {r.verified_by[0] for r in succeeded} == set(receiver.secrets[:2])
    assert WebhookMessage.objects.filter(endpoint__url__endswith="/c").count() == 0


def test_a_per_job_webhook_gets_only_the_events_of_its_filter(receiver: Receiver) -> None:
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=10))
    receiver.secrets.append(job_secret_issue(tenant=tenant))
    job = submit(tenant, webhook=receiver.url("/job"), webhook_events_filter=["job.succeeded"])
    succeed(job)
    run_due(dt.datetime.now(dt.UTC))
    assert [(r.payload["type"], bool(r.verified_by)) for r in receiver.received] == [
        ("job.succeeded", True)
    ]


def test_a_per_job_webhook_after_a_new_secret_verifies_with_the_old_and_the_new(
    receiver: Receiver,
) -> None:
    # given a tenant that issued a per-job webhook secret, then a new one
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=10))
    old = job_secret_issue(tenant=tenant)
    new = job_secret_issue(tenant=tenant)
    receiver.secrets.extend([old, new])
    # when a job's own webhook is sent
    job = submit(tenant, webhook=receiver.url("/job"), webhook_events_filter=["job.succeeded"])
    succeed(job)
    run_due(dt.datetime.now(dt.UTC))
    # then it carries both signatures: a receiver still on the old secret verifies it too
    [received] = receiver.received
    assert sorted(received.verified_by) == sorted([old, new])


def test_a_receiver_failing_three_times_gets_the_fourth_attempt_on_schedule(
    receiver: Receiver,
) -> None:
    # given a receiver that answers 500, 500, 500, then 204
    tenant, endpoint = tenant_with_endpoint(receiver, ["job.succeeded"])
    receiver.answers.extend([(500, {}), (500, {}), (500, {})])
    job = submit(tenant)
    succeed(job)
    now = dt.datetime.now(dt.UTC)
    # when the scheduler runs at each due time
    assert run_due(now) == ["retry"]
    message = WebhookMessage.objects.get(endpoint=endpoint)
    dues = []
    for _ in range(3):
        message.refresh_from_db()
        assert message.due_at is not None
        dues.append((message.due_at - now).total_seconds())
        assert run_due(message.due_at - dt.timedelta(seconds=1)) == []  # not yet due
        now = message.due_at
        run_due(now)
    # then the 4th attempt succeeded, each after its scheduled delay (+-10%), one webhook-id
    message.refresh_from_db()
    assert (message.status, message.attempts) == ("succeeded", 4)
    for due, delay in zip(dues, RETRY_DELAYS_S[:3], strict=True):
        assert delay * 0.9 <= due <= delay * 1.1
    assert len({r.id for r in receiver.received}) == 1 and len(receiver.received) == 4
    assert [a.status_code for a in message.log.all()] == [500, 500, 500, 204]


def test_retry_after_is_honoured_and_a_redirect_is_a_failure(receiver: Receiver) -> None:
    tenant, endpoint = tenant_with_endpoint(receiver, ["job.succeeded"])
    receiver.answers.extend(
        [(429, {"Retry-After": "120"}), (302, {"Location": receiver.url("/x")})]
    )
    succeed(submit(tenant))
    now = dt.datetime.now(dt.UTC)
    assert run_due(now) == ["retry"]
    message = WebhookMessage.objects.get(endpoint=endpoint)
    assert message.due_at == now + dt.timedelta(seconds=120)
    assert run_due(message.due_at) == ["retry"]  # the 302 is not followed: a failure
    assert [r.headers.get("webhook-id") for r in receiver.received] == [message.public_id] * 2
    assert [r.path for r in receiver.received] == ["/hook", "/hook"]  # never /x


def test_410_gone_disables_the_endpoint_and_tells_the_tenant(receiver: Receiver) -> None:
    tenant, endpoint = tenant_with_endpoint(receiver, ["job.succeeded"])
    receiver.answers.append((410, {}))
    succeed(submit(tenant))
    assert run_due(dt.datetime.now(dt.UTC)) == ["failed"]
    endpoint.refresh_from_db()
    assert not endpoint.enabled and "410" in endpoint.disabled_reason
    assert list(endpoint.notices.values_list("kind", flat=True)) == [EndpointNotice.Kind.DISABLED]


def test_410_gone_from_a_per_job_webhook_fails_its_message_without_retries(
    receiver: Receiver,
) -> None:
    # given a job whose own webhook URL answers 410 Gone
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=10))
    receiver.secrets.append(job_secret_issue(tenant=tenant))
    job = submit(tenant, webhook=receiver.url("/job"), webhook_events_filter=["job.succeeded"])
    receiver.answers.append((410, {}))
    succeed(job)
    # when its message is sent
    assert run_due(dt.datetime.now(dt.UTC)) == ["failed"]
    # then it is failed after that one attempt, with nothing left due
    message = WebhookMessage.objects.get(job=job)
    assert (message.status, message.attempts, message.due_at) == ("failed", 1, None)
    assert len(receiver.received) == 1


def test_a_receiver_down_for_six_hours_gets_every_event_once_with_working_image_urls(
    receiver: Receiver,
) -> None:
    # given a receiver that is down (503, no Retry-After) while three jobs succeed
    tenant, endpoint = tenant_with_endpoint(receiver, ["job.succeeded"])
    receiver.default = (503, {})
    for _ in range(3):
        succeed(submit(tenant))
    start = now = dt.datetime.now(dt.UTC)
    # when the scheduler runs every minute of a simulated six hours, then the receiver is back
    while now < start + dt.timedelta(hours=6):
        run_due(now)
        now += dt.timedelta(minutes=1)
    receiver.default = (204, {})
    while now < start + dt.timedelta(hours=12):
        run_due(now)
        now += dt.timedelta(minutes=10)
    # then it has every event once (deduped on webhook-id), and the images download
    unique = receiver.unique()
    assert sorted(r.payload["data"]["id"] for r in unique) == sorted(
        Job.objects.filter(tenant=tenant).values_list("public_id", flat=True)
    )
    assert WebhookMessage.objects.filter(endpoint=endpoint, status="succeeded").count() == 3
    for item in unique:
        (url,) = item.payload["data"]["output"]
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == image_bytes("PNG")
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.failing_since is None


def test_after_a_rotation_both_secrets_sign_during_the_window_then_only_the_new(
    receiver: Receiver, settings: Any
) -> None:
    tenant, endpoint = tenant_with_endpoint(receiver, ["job.succeeded"])
    old = receiver.secrets[0]
    _, new = endpoint_rotate_secret(tenant=tenant, endpoint_id=endpoint.public_id)
    receiver.secrets.append(new)
    succeed(submit(tenant))
    run_due(dt.datetime.now(dt.UTC))
    assert receiver.received[-1].verified_by == [old, new]
    # after the window, only the new secret signs
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        previous_secret_expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    )
    succeed(submit(tenant))
    run_due(dt.datetime.now(dt.UTC))
    assert receiver.received[-1].verified_by == [new]
    assert len(receiver.received[-1].headers["webhook-signature"].split(" ")) == 1


def pending_connections(listener: socket.socket) -> int:
    listener.setblocking(False)
    count = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            listener.accept()[0].close()
            count += 1
    return count


@pytest.mark.parametrize(
    "url", ["https://10.0.0.5/hook", "https://169.254.169.254/latest", "http://example.com/hook"]
)
def test_a_private_address_or_plain_http_is_refused_at_registration(url: str) -> None:
    tenant = TenantFactory()
    with pytest.raises(InvalidInput) as refused:
        endpoint_create(tenant=tenant, url=url, events=["job.succeeded"])
    assert "url" in refused.value.details
    assert not WebhookEndpoint.objects.filter(tenant=tenant).exists()


def test_an_endpoint_whose_dns_flips_to_loopback_is_refused_at_send_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a canary listening on loopback, and a name that resolves to a public address
    with socket.socket() as canary:
        canary.bind(("127.0.0.1", 0))
        canary.listen(8)
        port = canary.getsockname()[1]
        FakeDns({"flip.test": [["93.184.216.34"], ["127.0.0.1"]]}).install(monkeypatch)
        tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=10))
        endpoint, _ = endpoint_create(
            tenant=tenant, url=f"https://flip.test:{port}/hook", events=["job.succeeded"]
        )
        # when the name now points to loopback and a job's event is sent
        succeed(submit(tenant))
        assert run_due(dt.datetime.now(dt.UTC)) == ["retry"]
        # then nothing connected to the canary, and the attempt says why
        assert pending_connections(canary) == 0
        (attempt,) = WebhookMessage.objects.get(endpoint=endpoint).log.all()
        assert attempt.status_code is None and "not allowed" in attempt.error


def test_a_per_job_webhook_needs_the_per_job_secret_at_submit_and_at_send(
    receiver: Receiver,
) -> None:
    # given a tenant that never issued its per-job webhook secret: a job with a webhook is a 400
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=10))
    body = {"model": "tiny", "prompt": "a fox", "webhook": receiver.url("/job")}
    response = api_client_for(tenant).post("/v1/jobs", body, format="json")
    assert response.status_code == 400
    assert "POST /v1/webhooks/job-secret" in response.json()["error"]["details"]["webhook"][0]
    assert not Job.objects.filter(tenant=tenant).exists()
    # and a job whose secret is gone by the time its event is due fails once, unsent, saying why
    job_secret_issue(tenant=tenant)
    job = submit(tenant, webhook=receiver.url("/job"), webhook_events_filter=["job.succeeded"])
    JobWebhookSecret.objects.filter(tenant=tenant).delete()
    succeed(job)
    assert run_due(dt.datetime.now(dt.UTC)) == ["failed"]
    (attempt,) = WebhookMessage.objects.get(job=job).log.all()
    assert "POST /v1/webhooks/job-secret" in attempt.error
    assert receiver.received == []


def attempts_until_settled(start: dt.datetime) -> tuple[WebhookMessage, list[str]]:
    """Run the scheduler at each due time of the one message until it is settled."""
    outcomes: list[str] = []
    now = start
    for _ in range(50):
        outcomes += run_due(now)
        message = WebhookMessage.objects.get()
        if message.status in (WebhookMessage.Status.SUCCEEDED, WebhookMessage.Status.FAILED):
            return message, outcomes
        now = max(now, message.due_at or now) + dt.timedelta(seconds=1)
    raise AssertionError(f"not settled after 50 rounds: {outcomes}")


def test_retry_after_never_outlasts_the_schedule(receiver: Receiver) -> None:
    # given a receiver that always answers 503 with a Retry-After of one second
    tenant, _ = tenant_with_endpoint(receiver, ["job.succeeded"])
    receiver.default = (503, {"Retry-After": "1"})
    succeed(submit(tenant))
    # when the message is tried each time it is due
    message, outcomes = attempts_until_settled(dt.datetime.now(dt.UTC))
    # then it fails after the schedule's attempts, Retry-After only spacing them
    assert message.status == WebhookMessage.Status.FAILED
    assert message.attempts == len(receiver.received) == MAX_ATTEMPTS
    assert outcomes[-1] == "failed"


@pytest.mark.parametrize("value", ["\u00b2", "9" * 5000, "99999999999999", "Tue, 99 Xyz"])
def test_a_retry_after_that_is_no_delay_falls_back_to_the_schedule(
    receiver: Receiver, value: str
) -> None:
    tenant, _ = tenant_with_endpoint(receiver, ["job.succeeded"])
    receiver.answers.append((429, {"Retry-After": value}))
    succeed(submit(tenant))
    now = dt.datetime.now(dt.UTC)
    assert run_due(now) == ["retry"]
    message = WebhookMessage.objects.get()
    assert message.attempts == 1 and message.log.get().status_code == 429
    assert now + dt.timedelta(seconds=4) <= message.due_at <= now + dt.timedelta(seconds=6)


def test_an_answer_with_a_nul_byte_is_recorded_without_it(receiver: Receiver) -> None:
    tenant, _ = tenant_with_endpoint(receiver, ["job.succeeded"])
    receiver.default, receiver.reply = (200, {}), b"o\x00k"
    succeed(submit(tenant))
    assert run_due(dt.datetime.now(dt.UTC)) == ["succeeded"]
    assert WebhookMessage.objects.get().log.get().response_excerpt == "ok"


def test_an_attempt_that_fails_on_our_side_is_logged_and_on_the_schedule(
    receiver: Receiver, settings: Any
) -> None:
    # given an endpoint whose secret no key of the service can decrypt any more (the key that
    # encrypted it was dropped too early)
    tenant, _ = tenant_with_endpoint(receiver, ["job.succeeded"])
    succeed(submit(tenant))
    settings.WEBHOOK_SECRET_KEYS = [Fernet.generate_key().decode()]
    # when its message is tried
    assert run_due(dt.datetime.now(dt.UTC)) == ["retry"]
    # then nothing was sent, and the attempt is logged, the next one due on the schedule
    message = WebhookMessage.objects.get()
    assert receiver.received == []
    assert message.status == WebhookMessage.Status.PENDING and message.attempts == 1
    assert message.log.get().error.startswith("internal error before an answer: ")


def test_one_dispatch_is_sent_by_one_task_however_often_it_is_delivered(
    receiver: Receiver,
) -> None:
    # given a message handed over once (at once, when its event was committed), its task
    # delivered twice (SQS is at least once)
    tenant, _ = tenant_with_endpoint(receiver, ["job.succeeded"])
    succeed(submit(tenant))
    now = dt.datetime.now(dt.UTC)
    message = WebhookMessage.objects.get()
    assert message.status == WebhookMessage.Status.SENDING
    lease = message.sending_since
    # when both copies of the task run, then only the first sends
    assert message_deliver(message_pk=message.pk, lease=lease, now=now) == "succeeded"
    assert message_deliver(message_pk=message.pk, lease=lease, now=now) == "gone"
    assert len(receiver.received) == 1


def test_a_task_of_a_dispatch_whose_lease_ran_out_sends_nothing(receiver: Receiver) -> None:
    # given a message handed over (at once), whose task waited in the queue past the lease
    tenant, _ = tenant_with_endpoint(receiver, ["job.succeeded"])
    succeed(submit(tenant))
    now = dt.datetime.now(dt.UTC)
    message = WebhookMessage.objects.get()
    late = message.sending_since
    # when the sweep takes it back (an attempt counted, logged) and hands it over again
    later = now + SENDING_LEASE + dt.timedelta(seconds=1)
    messages_dispatch(now=later)
    message.refresh_from_db()
    assert message.attempts == 1 and "no outcome recorded" in message.log.get().error
    messages_dispatch(now=later + dt.timedelta(seconds=10))
    # then the late task sends nothing, and the new one sends it
    assert message_deliver(message_pk=message.pk, lease=late, now=later) == "gone"
    message.refresh_from_db()
    assert message_deliver(message_pk=message.pk, lease=message.sending_since, now=later) == (
        "succeeded"
    )
    assert len(receiver.received) == 1


def test_a_message_whose_sender_always_dies_comes_to_the_end_of_its_schedule(
    receiver: Receiver,
) -> None:
    # given a message whose every sender dies before it records anything
    tenant, _ = tenant_with_endpoint(receiver, ["job.succeeded"])
    succeed(submit(tenant))
    now = dt.datetime.now(dt.UTC)
    # when the sweep takes it back each time its lease runs out
    for _ in range(3 * MAX_ATTEMPTS):
        messages_dispatch(now=now)
        now += SENDING_LEASE + dt.timedelta(hours=25)
    # then it failed after the schedule's attempts, each logged
    message = WebhookMessage.objects.get()
    assert message.status == WebhookMessage.Status.FAILED
    assert message.attempts == message.log.count() == MAX_ATTEMPTS
