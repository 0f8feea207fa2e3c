"""The reconciler: admitted jobs whose queue message is gone are published again, or failed."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.conf import settings
from django.utils import timezone

from jobs.models import Job, JobEvent
from jobs.services import reconcile
from jobs.services.dispatch import jobs_publish
from jobs.services.lifecycle import (
    job_mark_failed,
    job_mark_preempted,
    job_mark_progress,
    job_mark_received,
    job_mark_started,
    job_mark_succeeded,
)
from jobs.services.reconcile import (
    RECONCILE_CONFIRM_S,
    Reconciled,
    jobs_reconcile_lost,
    jobs_sweep_dead_lettered,
)
from jobs.tasks import reconcile_lost
from sdsaas.broker.sqs import dead_letter_queue_name, model_queue_name
from sdsaas.contract import TASK_FETCH_INPUT_IMAGE, TASK_RECONCILE_LOST
from tenants.models import UsageRecord
from tests.support.api import credits, own_keys, submit_job
from tests.support.aws import LocalAws
from tests.support.concurrency import run_parallel
from tests.support.factories import (
    DiffusionModelFactory,
    PlanFactory,
    TenantFactory,
    api_client_for,
)

pytestmark = [pytest.mark.usefixtures("local_aws"), pytest.mark.django_db(transaction=True)]

SILENT_FOR = dt.timedelta(seconds=120)
NOTHING = Reconciled(unseen=[], republished=[], failed=[])


@pytest.fixture
def setup():  # type: ignore[no-untyped-def]
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=2, monthly_credits=10))
    DiffusionModelFactory(slug="tiny")
    return tenant, api_client_for(tenant)


def queue() -> str:
    return model_queue_name("tiny")


def lose_messages(aws: LocalAws, name: str) -> list[str]:
    """Delete every message of a queue, as a purge or a fresh SQS server does; their bodies."""
    sqs, url = aws.client("sqs"), aws.queue_url(name)
    bodies: list[str] = []
    while url is not None:
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            break
        for message in batch:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            bodies.append(message["Body"])
    return bodies


def age(seconds: int = 300) -> None:
    """Every admission, publish and event so far happened `seconds` ago."""
    past = timezone.now() - dt.timedelta(seconds=seconds)
    Job.objects.filter(admitted_at__isnull=False).update(admitted_at=past)
    Job.objects.filter(published_at__isnull=False).update(published_at=past)
    JobEvent.objects.update(created_at=past)


def look() -> Reconciled:
    return jobs_reconcile_lost(silent_for=SILENT_FOR)


def look_twice() -> Reconciled:
    """Two runs of the reconciler, the second one long enough after the first look to act."""
    look()
    age_first_looks()
    return look()


def age_first_looks() -> None:
    past = timezone.now() - dt.timedelta(seconds=RECONCILE_CONFIRM_S + 1)
    JobEvent.objects.filter(kind="unseen").update(created_at=past)


def published(aws: LocalAws, name: str) -> dict[str, int]:
    """Job id -> attempt of each job message in the queue (received for 300 s)."""
    return {
        t["kwargs"]["job"]["job_id"]: t["kwargs"]["job"]["attempt"] for t in aws.drain_tasks(name)
    }


def state(job_id: str) -> tuple[str, int]:
    job = Job.objects.get(public_id=job_id)
    return job.status, job.attempt


def kinds(job_id: str) -> list[tuple[str, int]]:
    return list(
        JobEvent.objects.filter(job__public_id=job_id).values_list("kind", "attempt").order_by("id")
    )


def test_a_lost_message_is_published_again_and_a_late_original_changes_nothing(setup, local_aws):  # type: ignore[no-untyped-def]
    tenant, client = setup
    first, second = submit_job(client), submit_job(client)
    # given two admitted jobs whose messages are gone (one had started), silent for 5 minutes
    assert job_mark_started(job_public_id=second, attempt=1, load_s=0.1)
    originals = lose_messages(local_aws, queue())
    assert len(originals) == 2
    age()
    # when the reconciler looks: it notes them, and a look again at once changes nothing
    assert sorted(look().unseen) == sorted([first, second])
    assert look() == NOTHING
    # when it looks again later, then once more
    age_first_looks()
    done = look()
    assert look() == NOTHING
    # then both are published again once, at attempt 1 + SQS_MAX_RECEIVES, with events saying so
    fenced = 1 + settings.SQS_MAX_RECEIVES
    assert sorted(done.republished) == sorted([first, second]) and done.failed == []
    assert published(local_aws, queue()) == {first: fenced, second: fenced}
    assert state(first) == state(second) == ("starting", fenced)
    assert kinds(second)[-2:] == [("unseen", 1), ("republished", fenced)]
    event = JobEvent.objects.get(job__public_id=second, kind="republished")
    assert event.detail["previous_attempt"] == 1
    assert "no message on its queue" in event.detail["reason"]
    # when the original's worker reports late, for each attempt its message could run as
    for attempt in range(1, fenced):
        assert not job_mark_received(job_public_id=first, attempt=attempt)
    last = fenced - 1
    assert not job_mark_started(job_public_id=first, attempt=last, load_s=0.1)
    assert not job_mark_progress(job_public_id=first, attempt=last, step=1, total=4)
    assert not job_mark_preempted(job_public_id=first, attempt=last)
    assert not job_mark_succeeded(
        job_public_id=first, attempt=last, output_keys=own_keys(first), metrics={}
    )
    assert not job_mark_failed(
        job_public_id=second, attempt=last, code="internal_error", message="late"
    )
    # and the original messages turn up dead-lettered
    sqs = local_aws.client("sqs")
    dlq = local_aws.queue_url(dead_letter_queue_name(queue()))
    for body in originals:
        sqs.send_message(QueueUrl=dlq, MessageBody=body)
    assert jobs_sweep_dead_lettered() == NOTHING
    # then nothing changed: both wait for their new attempt, nothing metered, credits reserved
    assert state(first) == state(second) == ("starting", fenced)
    assert Job.objects.get(public_id=first).output_keys == []
    assert not UsageRecord.objects.exists()
    assert credits(tenant) == (0, 2)
    # and the new attempt runs as usual, metered once
    assert job_mark_received(job_public_id=first, attempt=fenced)
    assert job_mark_started(job_public_id=first, attempt=fenced, load_s=0.1)
    assert job_mark_succeeded(
        job_public_id=first, attempt=fenced, output_keys=own_keys(first), metrics={}
    )
    assert state(first) == ("succeeded", fenced)
    assert credits(tenant) == (1, 1)


def test_a_backlog_a_held_message_or_a_dead_letter_is_never_touched(setup, local_aws):  # type: ignore[no-untyped-def]
    _tenant, client = setup
    jobs = [submit_job(client), submit_job(client)]
    age()
    # given old jobs whose messages wait in the queue (no worker for the model): untouched
    assert look_twice() == NOTHING
    # given their messages held by workers (in flight): untouched
    assert sorted(published(local_aws, queue())) == sorted(jobs)
    assert look_twice() == NOTHING
    # given their messages gone but another message in the queue: neither is touched (SQS cannot
    # tell whose message it is)
    sqs = local_aws.client("sqs")
    url = local_aws.queue_url(queue())
    sqs.purge_queue(QueueUrl=url)
    sqs.send_message(QueueUrl=url, MessageBody="a message of someone's")
    assert look_twice() == NOTHING
    # given the queue empty but a message in its dead-letter queue (the dead-letter sweep's)
    lose_messages(local_aws, queue())
    dlq = local_aws.queue_url(dead_letter_queue_name(queue()))
    sqs.send_message(QueueUrl=dlq, MessageBody="not yet swept")
    assert look_twice() == NOTHING
    # given SQS unreachable: an outage is not an empty queue
    lose_messages(local_aws, dead_letter_queue_name(queue()))
    local_aws.proxy.stop()
    try:
        assert look_twice() == NOTHING
    finally:
        local_aws.proxy.start()
    assert [state(job) for job in jobs] == [("starting", 1)] * 2
    assert not JobEvent.objects.filter(kind="unseen").exists()
    # and once the queue and its dead-letter queue hold nothing, both are published again
    assert sorted(look_twice().republished) == sorted(jobs)


def test_a_backlog_on_one_model_hides_no_lost_job_of_another(setup, local_aws, monkeypatch):  # type: ignore[no-untyped-def]
    # given a model whose jobs wait in its queue, more than a run looks at, and then one job of
    # another model whose message is gone
    tenant, client = setup
    tenant.plan.max_concurrent_jobs = 10
    tenant.plan.save()
    monkeypatch.setattr(reconcile, "RECONCILE_WINDOW", 3)
    waiting = [submit_job(client) for _ in range(3)]
    DiffusionModelFactory(slug="quiet")
    lost = submit_job(client, model="quiet")
    lose_messages(local_aws, model_queue_name("quiet"))
    age()
    # when the reconciler looks twice, then the lost job is published again, the others wait
    assert look_twice().republished == [lost]
    assert [state(job) for job in waiting] == [("starting", 1)] * 3


def test_a_recent_job_or_one_with_a_recent_event_is_not_taken_for_lost(setup, local_aws):  # type: ignore[no-untyped-def]
    _tenant, client = setup
    quiet, busy = submit_job(client), submit_job(client)
    lose_messages(local_aws, queue())
    # given jobs admitted and published a moment ago: untouched
    assert look_twice() == NOTHING
    # given both admitted long ago, but one received by a worker a moment ago: only the other
    age()
    assert job_mark_received(job_public_id=busy, attempt=1)
    assert look_twice().republished == [quiet]
    assert state(busy) == ("starting", 1)


def test_a_job_that_progresses_or_finishes_between_two_looks_is_left_alone(setup, local_aws):  # type: ignore[no-untyped-def]
    tenant, client = setup
    job_id = submit_job(client)
    # given a job denoising for minutes (progress writes no event) whose worker has just deleted
    # its message after sending its success, which is not applied yet
    assert job_mark_started(job_public_id=job_id, attempt=1, load_s=0.1)
    assert job_mark_progress(job_public_id=job_id, attempt=1, step=1, total=4)
    lose_messages(local_aws, queue())
    age()
    assert look().unseen == [job_id]
    # when it reports progress before the second look: it is only looked at afresh
    assert job_mark_progress(job_public_id=job_id, attempt=1, step=2, total=4)
    age_first_looks()
    assert look() == Reconciled(unseen=[job_id], republished=[], failed=[])
    # when its success is applied before the next look: it is left alone
    assert job_mark_succeeded(
        job_public_id=job_id, attempt=1, output_keys=own_keys(job_id), metrics={}
    )
    age_first_looks()
    assert look() == NOTHING
    assert state(job_id) == ("succeeded", 1)
    assert credits(tenant) == (1, 0)


def test_lost_again_after_the_last_republish_fails_and_frees_the_slot(setup, local_aws, settings):  # type: ignore[no-untyped-def]
    settings.RECONCILE_MAX_REPUBLISHES = 1
    tenant, client = setup
    # given two admitted jobs (the tenant's cap) and a third waiting for a slot
    first, second, waiting = submit_job(client), submit_job(client), submit_job(client)
    assert state(waiting) == ("queued", 0)
    # when their messages are lost, the reconciler publishes them again; lost once more
    lose_messages(local_aws, queue())
    age()
    assert len(look_twice().republished) == 2
    lose_messages(local_aws, queue())
    age()
    done = look_twice()
    # then they fail with a clear reason, their credits released
    assert sorted(done.failed) == sorted([first, second]) and done.republished == []
    job = Job.objects.get(public_id=first)
    assert (job.status, job.error_code) == ("failed", "message_lost")
    assert "lost 2 times" in job.error_message and "credits were released" in job.error_message
    # and the waiting job is admitted and published at once
    assert state(waiting) == ("starting", 1)
    assert published(local_aws, queue()) == {waiting: 1}
    assert credits(tenant) == (0, 1)


def test_a_deleted_queue_is_created_again_and_its_jobs_published(setup, local_aws):  # type: ignore[no-untyped-def]
    _tenant, client = setup
    sqs = local_aws.client("sqs")
    first = submit_job(client)
    # given the model's queue and dead-letter queue deleted (this process cached both as existing)
    for name in (queue(), dead_letter_queue_name(queue())):
        sqs.delete_queue(QueueUrl=local_aws.queue_url(name))
    # when a job is submitted: it is published all the same, to the queue created again
    second = submit_job(client)
    assert Job.objects.get(public_id=second).published_at is not None
    assert published(local_aws, queue()) == {second: 1}
    # when the queues are deleted again, with both jobs' messages, and the reconciler runs
    for name in (queue(), dead_letter_queue_name(queue())):
        sqs.delete_queue(QueueUrl=local_aws.queue_url(name))
    age()
    done = look_twice()
    # then both are published again to the queue created anew with its redrive and timeout
    assert sorted(done.republished) == sorted([first, second])
    url = local_aws.queue_url(queue())
    assert url is not None
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == str(settings.SQS_VISIBILITY_TIMEOUT)
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(dead_letter_queue_name(queue()))
    assert int(redrive["maxReceiveCount"]) == settings.SQS_MAX_RECEIVES
    assert sorted(published(local_aws, queue())) == sorted([first, second])


def test_an_image_fetch_whose_message_is_gone_is_sent_again(setup, local_aws):  # type: ignore[no-untyped-def]
    _tenant, client = setup
    # given an img2img job by URL, admitted, its fetch task lost from the control queue
    job_id = submit_job(client, image="https://images.example.com/cat.png")
    control = f"{settings.SQS_QUEUE_PREFIX}-control"
    assert len(lose_messages(local_aws, control)) == 1
    age()
    # when the reconciler runs
    assert look_twice().republished == [job_id]
    # then the fetch is sent again
    (task,) = local_aws.drain_tasks(control)
    assert task["task"] == TASK_FETCH_INPUT_IMAGE
    assert task["kwargs"] == {"job_pk": Job.objects.get(public_id=job_id).pk}


def test_two_reconcilers_at_once_publish_each_lost_job_once(setup, local_aws):  # type: ignore[no-untyped-def]
    _tenant, client = setup
    jobs = [submit_job(client), submit_job(client)]
    lose_messages(local_aws, queue())
    age()
    for _ in range(2):  # the first look, then the second
        results = run_parallel(2, lambda _: look())
        age_first_looks()
    assert JobEvent.objects.filter(kind="unseen").count() == 2
    assert sorted(job for result in results for job in result.republished) == sorted(jobs)
    assert JobEvent.objects.filter(kind="republished").count() == 2
    assert sorted(published(local_aws, queue())) == sorted(jobs)


def test_the_scheduler_runs_the_reconciler_with_its_setting(setup, local_aws, settings):  # type: ignore[no-untyped-def]
    assert {"task": TASK_RECONCILE_LOST, "schedule": 15.0} in settings.CELERY_BEAT_SCHEDULE.values()
    _tenant, client = setup
    job_id = submit_job(client)
    lose_messages(local_aws, queue())
    age(100)
    settings.RECONCILE_AFTER_S = 120
    assert reconcile_lost() == {"unseen": [], "republished": [], "failed": []}
    settings.RECONCILE_AFTER_S = 60
    assert reconcile_lost() == {"unseen": [job_id], "republished": [], "failed": []}
    age_first_looks()
    assert reconcile_lost() == {"unseen": [], "republished": [job_id], "failed": []}


def hand_back_until_dead_lettered(aws: LocalAws, name: str) -> int:
    """Receive the queue's messages and hand each back at once (visibility 0), as a worker that
    stops with messages taken ahead does, until SQS has dead-lettered them all; the receives."""
    sqs, url = aws.client("sqs"), aws.queue_url(name)
    receives = 0
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in batch:
            sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        receives += len(batch)
    return receives


def test_a_message_handed_back_unrun_until_dead_lettered_is_published_again(setup, local_aws):  # type: ignore[no-untyped-def]
    tenant, client = setup
    # given a job whose message each worker that received it handed back without running it (it
    # was taken ahead for a batch, and the worker stopped), until SQS dead-lettered it
    job_id = submit_job(client)
    assert hand_back_until_dead_lettered(local_aws, queue()) == settings.SQS_MAX_RECEIVES
    # when the dead-letter sweep runs, then again
    done = jobs_sweep_dead_lettered()
    assert jobs_sweep_dead_lettered() == NOTHING
    # then it is not failed but published again, as attempt 1 + SQS_MAX_RECEIVES, saying why
    fenced = 1 + settings.SQS_MAX_RECEIVES
    assert done == Reconciled(unseen=[], republished=[job_id], failed=[])
    assert state(job_id) == ("starting", fenced)
    assert published(local_aws, queue()) == {job_id: fenced}
    assert local_aws.drain_tasks(dead_letter_queue_name(queue())) == []
    event = JobEvent.objects.get(job__public_id=job_id, kind="republished")
    assert event.detail["reason"].startswith("its message was dead-lettered after 3 deliveries")
    assert "lost on 0" in event.detail["reason"]
    # and the new attempt runs as usual, metered once
    assert job_mark_received(job_public_id=job_id, attempt=fenced)
    assert job_mark_succeeded(
        job_public_id=job_id, attempt=fenced, output_keys=own_keys(job_id), metrics={}
    )
    assert state(job_id) == ("succeeded", fenced)
    assert credits(tenant) == (1, 0)


def test_only_a_job_whose_worker_was_lost_on_every_delivery_fails(setup, local_aws):  # type: ignore[no-untyped-def]
    tenant, client = setup
    # given two jobs received on each delivery: the workers of one were lost every time; one
    # delivery of the other was preempted (and handed back: SQS could not take its copy)
    lost, preempted = submit_job(client), submit_job(client)
    for attempt in range(1, settings.SQS_MAX_RECEIVES + 1):
        assert job_mark_received(job_public_id=lost, attempt=attempt)
        assert job_mark_received(job_public_id=preempted, attempt=attempt)
        assert job_mark_started(job_public_id=preempted, attempt=attempt, load_s=0.1)
        if attempt == 2:
            assert job_mark_preempted(job_public_id=preempted, attempt=attempt)
    assert hand_back_until_dead_lettered(local_aws, queue()) == 2 * settings.SQS_MAX_RECEIVES
    # beside a dead letter that is no task of ours
    sqs = local_aws.client("sqs")
    dlq = local_aws.queue_url(dead_letter_queue_name(queue()))
    sqs.send_message(QueueUrl=dlq, MessageBody="not a celery task")
    # when the dead-letter sweep runs
    done = jobs_sweep_dead_lettered()
    # then the job whose workers were all lost fails `worker_lost`, its credit released
    assert done == Reconciled(unseen=[], republished=[preempted], failed=[lost])
    job = Job.objects.get(public_id=lost)
    assert (job.status, job.error_code) == ("failed", "worker_lost")
    assert job.error_message == "The worker was lost on each of 3 deliveries of this job."
    # and the other is published again; nothing is left dead-lettered
    fenced = settings.SQS_MAX_RECEIVES + settings.SQS_MAX_RECEIVES
    assert published(local_aws, queue()) == {preempted: fenced}
    assert local_aws.drain_tasks(dead_letter_queue_name(queue())) == []
    assert credits(tenant) == (0, 1)


def test_dead_lettered_again_after_the_last_republish_fails(setup, local_aws, settings):  # type: ignore[no-untyped-def]
    settings.RECONCILE_MAX_REPUBLISHES = 1
    tenant, client = setup
    # given a job handed back unrun until dead-lettered, published again by the sweep
    job_id = submit_job(client)
    hand_back_until_dead_lettered(local_aws, queue())
    assert jobs_sweep_dead_lettered().republished == [job_id]
    # when its new message is handed back unrun until dead-lettered too
    assert hand_back_until_dead_lettered(local_aws, queue()) == settings.SQS_MAX_RECEIVES
    done = jobs_sweep_dead_lettered()
    # then it fails `worker_lost`, saying so, its credit released
    assert done == Reconciled(unseen=[], republished=[], failed=[job_id])
    job = Job.objects.get(public_id=job_id)
    assert (job.status, job.error_code) == ("failed", "worker_lost")
    assert "delivered 3 times without the job ending" in job.error_message
    assert "published 2 times in all" in job.error_message
    assert credits(tenant) == (0, 0)


def test_a_preempted_jobs_copy_is_published_again_above_every_attempt_it_ran_as(setup, local_aws):  # type: ignore[no-untyped-def]
    _tenant, client = setup
    # given a job preempted on its first delivery: its worker sends a copy of its message as
    # attempt 2 and deletes the original
    job_id = submit_job(client)
    assert job_mark_received(job_public_id=job_id, attempt=1)
    assert job_mark_preempted(job_public_id=job_id, attempt=1)
    assert state(job_id) == ("starting", 2)
    lose_messages(local_aws, queue())
    Job.objects.filter(public_id=job_id).update(published_at=None)
    assert jobs_publish(job_ids=Job.objects.filter(public_id=job_id).values_list("pk", flat=True))
    # when the copy is lost, the reconciler publishes it again above the attempts the copy ran as
    # (2 to 1 + SQS_MAX_RECEIVES)
    copy_last = 2 + settings.SQS_MAX_RECEIVES - 1
    lose_messages(local_aws, queue())
    age()
    assert look_twice().republished == [job_id]
    assert state(job_id) == ("starting", copy_last + 1)
    # and when that message is dead-lettered unrun, the sweep publishes it above its attempts too
    hand_back_until_dead_lettered(local_aws, queue())
    assert jobs_sweep_dead_lettered().republished == [job_id]
    assert state(job_id) == ("starting", copy_last + 1 + settings.SQS_MAX_RECEIVES)


def test_only_the_dead_lettered_messages_own_deliveries_count(setup, local_aws):  # type: ignore[no-untyped-def]
    _tenant, client = setup
    # given a job whose workers were lost on two deliveries of its first message; the third was
    # handed back unrun, and the message dead-lettered, then published again by the sweep
    job_id = submit_job(client)
    for attempt in (1, 2):
        assert job_mark_received(job_public_id=job_id, attempt=attempt)
    hand_back_until_dead_lettered(local_aws, queue())
    assert jobs_sweep_dead_lettered().republished == [job_id]
    status, again = state(job_id)
    assert (status, again) == ("starting", 2 + settings.SQS_MAX_RECEIVES)  # above the row's 2
    # when the worker of its new message's first delivery is lost too, and that message is
    # handed back unrun until dead-lettered
    assert job_mark_received(job_public_id=job_id, attempt=again)
    hand_back_until_dead_lettered(local_aws, queue())
    letters = local_aws.client("sqs").receive_message(
        QueueUrl=local_aws.queue_url(dead_letter_queue_name(queue())), VisibilityTimeout=0
    )["Messages"]
    done = jobs_sweep_dead_lettered()
    # then it is published again: three of its deliveries were lost, but one of that message's
    assert done.republished == [job_id] and done.failed == []
    assert state(job_id) == ("starting", again + settings.SQS_MAX_RECEIVES)
    # and when the sweep sees that letter again (it died before deleting it), nothing changes
    sqs = local_aws.client("sqs")
    dlq = local_aws.queue_url(dead_letter_queue_name(queue()))
    sqs.send_message(QueueUrl=dlq, MessageBody=letters[0]["Body"])
    assert jobs_sweep_dead_lettered() == NOTHING
    assert state(job_id) == ("starting", again + settings.SQS_MAX_RECEIVES)
    assert JobEvent.objects.filter(job__public_id=job_id, kind="republished").count() == 2
