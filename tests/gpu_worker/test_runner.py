"""One job message through the GPU runner, against the local S3: events, outputs, cancel, errors.

The events go to a list instead of the control queue: the runner takes its sender as an argument,
and what is checked here is what it reports and when (the e2e tests send them for real).
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from gpu_worker import events as worker_events
from gpu_worker import inference, runner, watchdog
from gpu_worker.batch_budget import BatchBudget
from gpu_worker.events import publish_all, send_event
from sdsaas.broker.sqs import control_queue_name
from sdsaas.contract import (
    CONTRACT_VERSION,
    TASK_JOB_EVENTS,
    Event,
    FailureCode,
    JobFailed,
    JobKind,
    JobMessage,
    JobProgress,
    JobReceived,
    JobStarted,
    JobSucceeded,
    cancel_marker_key,
    event_from_wire,
)
from tests.support.job_messages import message, message_dict

pytestmark = pytest.mark.usefixtures("local_aws")


class Events(list[tuple[float, str, dict[str, Any]]]):
    """What the runner reports: (when, task name, the event as it goes on the wire)."""

    def __call__(self, events: Sequence[Event]) -> None:
        self.extend((time.monotonic(), event.TASK, event.to_wire()) for event in events)

    def kinds(self) -> list[str]:
        return [name for _, name, _ in self if name != JobProgress.TASK]


def abandon(reason: str) -> None:
    """A worker's abandon ends its process; this one returns, and the runner raises Abandoned."""


def abandon_batch(reason: str, running: list[int], finished: dict[int, str]) -> None:
    """The same, for a batch."""


def test_a_job_reports_started_then_succeeded_with_its_images_in_s3(tiny_model_dir: Path) -> None:
    # when a job of two images runs
    events = Events()
    job = message(tiny_model_dir, "job_runner_ok", num_outputs=2)
    outcome = runner.run_job(job, attempt=3, storage=default_storage, abandon=abandon, send=events)
    # then it reports received, started (with load time) and succeeded (with keys and metrics)
    assert outcome == "succeeded"
    assert events.kinds() == [JobReceived.TASK, JobStarted.TASK, JobSucceeded.TASK]
    received, started, succeeded = (kw for _, name, kw in events if name != JobProgress.TASK)
    assert received["attempt"] == started["attempt"] == succeeded["attempt"] == 3
    assert started["load_s"] >= 0
    assert succeeded["output_keys"] == [
        f"{job.output_prefix}0.png",
        f"{job.output_prefix}1.png",
    ]
    assert set(succeeded["metrics"]) == {
        "queue_s",
        "batch_size",
        "load_s",
        "inference_s",
        "encode_s",
        "upload_s",
    }
    assert succeeded["metrics"]["batch_size"] == 1
    # and each image is in S3 with its own seed in its record
    for index, key in enumerate(succeeded["output_keys"]):
        with default_storage.open(key, "rb") as handle:
            record = json.loads(Image.open(io.BytesIO(handle.read())).text["sdsaas"])
        assert (record["seed"], record["image_index"]) == (5 + index, index)
        assert record["model"] == {"slug": "tiny", "revision": "tiny-1", "sha256": ""}
        assert record["versions"]["torch"] == torch.__version__
        assert record["device"] == "cpu"


def test_progress_is_reported_at_most_once_an_interval(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an interval (a second in production) that a job of 40 tiny steps outlasts on any CPU
    monkeypatch.setattr(runner, "PROGRESS_INTERVAL_S", 0.1)
    # when a job of many steps runs
    events = Events()
    job = message(tiny_model_dir, "job_runner_progress", steps=40)
    began = time.monotonic()
    assert (
        runner.run_job(job, attempt=1, storage=default_storage, abandon=abandon, send=events)
        == "succeeded"
    )
    elapsed = time.monotonic() - began
    # then it reported progress, not more than once an interval (the first an interval after it
    # started), with growing steps
    progress = [(at, kw["step"]) for at, name, kw in events if name == JobProgress.TASK]
    assert 1 <= len(progress) <= elapsed / runner.PROGRESS_INTERVAL_S
    started = next(at for at, name, _ in events if name == JobStarted.TASK)
    times = [started, *(at for at, _ in progress)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= runner.PROGRESS_INTERVAL_S for gap in gaps), gaps
    steps = [step for _, step in progress]
    assert steps == sorted(steps) and steps[-1] <= 40


def test_a_job_past_its_time_limit_fails_as_timeout_at_a_step_boundary(
    tiny_model_dir: Path,
) -> None:
    # given a job whose time limit is far shorter than its many short steps
    fields = {"steps": 150, "width": 512, "height": 512}  # 5 s or more, in steps of 0.1 s
    job = replace(message(tiny_model_dir, "job_runner_timeout", **fields), time_limit_s=2)
    events = Events()
    began = time.monotonic()
    # when it runs, then it ends in-process at a step boundary soon after its limit
    assert runner.run_job(
        job, attempt=1, storage=default_storage, abandon=abandon, send=events
    ) == ("failed")
    assert time.monotonic() - began < 2 + watchdog.INTERRUPT_WAIT_S
    # and it reports the timeout, with the limit in the message
    assert events.kinds() == [JobReceived.TASK, JobStarted.TASK, JobFailed.TASK]
    failed = events[-1][2]
    assert failed["code"] == "timeout"
    assert "2s" in failed["message"]


def test_the_worker_ceiling_caps_the_time_limit_of_the_message(
    tiny_model_dir: Path, settings: Any
) -> None:
    settings.GPU_JOB_TIME_LIMIT_S = 7
    job = message_dict(tiny_model_dir, "job_runner_ceiling")
    assert runner.time_limit_s(JobMessage.from_wire({**job, "time_limit_s": 3.5})) == 3.5
    assert runner.time_limit_s(JobMessage.from_wire({**job, "time_limit_s": 60})) == 7
    # a message of an older control plane, without a limit, runs under the ceiling
    assert runner.time_limit_s(JobMessage.from_wire(job)) == 7


def test_a_job_canceled_before_it_starts_never_loads_the_model(tiny_model_dir: Path) -> None:
    # given the cancel marker of a job in S3, and a model path that does not exist
    job = message(tiny_model_dir, "job_runner_canceled")
    job = replace(job, model=replace(job.model, source_uri="/nonexistent/model"))
    default_storage.save(cancel_marker_key(job.output_prefix), ContentFile(b"canceled"))
    events = Events()
    # when it is delivered, then it ends at once, reporting nothing
    assert (
        runner.run_job(job, attempt=1, storage=default_storage, abandon=abandon, send=events)
        == "canceled"
    )
    assert events == []


def test_a_missing_model_fails_as_invalid_input_after_the_delivery_was_reported(
    tiny_model_dir: Path,
) -> None:
    job = message(tiny_model_dir, "job_runner_missing")
    job = replace(job, model=replace(job.model, source_uri="/nonexistent/model", revision="gone"))
    events = Events()
    assert (
        runner.run_job(job, attempt=2, storage=default_storage, abandon=abandon, send=events)
        == "failed"
    )
    # the delivery is reported before the model is loaded, so it counts even if loading fails
    (_, received, received_kwargs), (_, failed, failed_kwargs) = events
    assert (received, received_kwargs) == (
        JobReceived.TASK,
        {"job_id": job.job_id, "attempt": 2, "v": CONTRACT_VERSION},
    )
    assert (failed, failed_kwargs["code"]) == (JobFailed.TASK, "invalid_input")


def test_an_input_image_gone_from_the_bucket_fails_as_invalid_input(tiny_model_dir: Path) -> None:
    # given an img2img job whose input image expired from the bucket since it was submitted
    job = message(tiny_model_dir, "job_runner_expired_input", strength=0.5)
    job = replace(job, kind=JobKind.IMG2IMG, init_image_key=f"{job.output_prefix}input.png")
    events = Events()
    # when it runs, then it fails as the request's fault, saying what to do
    outcome = runner.run_job(job, attempt=1, storage=default_storage, abandon=abandon, send=events)
    assert outcome == "failed"
    [failed] = [kw for _, name, kw in events if name == JobFailed.TASK]
    assert failed["code"] == "invalid_input" and "upload it again" in failed["message"]


def test_cpu_and_gpu_out_of_memory_are_both_recognised() -> None:
    cpu_oom = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
    )
    assert inference.out_of_memory(cpu_oom)
    assert inference.out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not inference.out_of_memory(RuntimeError("size mismatch for weight"))


def test_the_cancel_check_keeps_going_when_storage_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a storage whose endpoint cannot be reached
    monkeypatch.setitem(
        settings.STORAGES["default"]["OPTIONS"], "endpoint_url", "http://127.0.0.1:9"
    )
    from storages.backends.s3 import S3Storage

    unreachable = S3Storage(**settings.STORAGES["default"]["OPTIONS"])
    # when the cancel check asks it, then the job goes on (it asks again at the next check)
    assert watchdog.canceled(unreachable, "tenants/1/jobs/x/cancel") is False


def test_an_event_to_a_control_queue_deleted_meanwhile_creates_it_and_arrives(
    local_aws: Any,
) -> None:
    # given a worker that sent an event (kombu now caches the control queue's URL)
    publish_all([JobReceived("job_queue_gone", 1)])
    url = local_aws.queue_url(control_queue_name())
    assert url is not None
    # when the queue is deleted (a purge by re-creation, a local SQS server started anew)
    local_aws.client("sqs").delete_queue(QueueUrl=url)
    # then the next event is not lost: the queue is created again and holds it
    publish_all(failed("job_queue_gone"))
    tasks = local_aws.drain_tasks(control_queue_name())
    assert [(t["task"], t["kwargs"]["job_id"]) for t in tasks] == [
        (JobFailed.TASK, "job_queue_gone")
    ]


def test_interim_events_leave_the_jobs_path_and_its_outcome_is_sent_after_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a control queue that answers only when let
    sent: list[str] = []
    answer = threading.Event()

    def slow_send(events: Sequence[Event]) -> None:
        assert answer.wait(10)
        sent.extend(event.TASK for event in events)

    monkeypatch.setattr(worker_events, "_send", slow_send)
    # when a job reports received, started and progress, then they are not waited for
    send_event(JobReceived("job_events_order", 1))
    send_event(JobStarted("job_events_order", 1, load_s=0.1))
    send_event(JobProgress("job_events_order", 1, step=1, total=2))
    assert sent == []
    # when its outcome is sent, then it goes once the interim events went, all in order
    answer.set()
    send_event(JobSucceeded("job_events_order", 1, output_keys=["k"], metrics={}))
    assert sent == [JobReceived.TASK, JobStarted.TASK, JobProgress.TASK, JobSucceeded.TASK]


def test_jobs_run_as_one_batch_are_each_reported_with_their_own_images(
    tiny_model_dir: Path,
) -> None:
    # given three jobs of one batch key, one of them canceled before the batch starts
    events = Events()
    jobs = [
        message(tiny_model_dir, "job_batch_a", seed=1, num_outputs=2),
        message(tiny_model_dir, "job_batch_b", prompt="a paper boat", seed=2),
        message(tiny_model_dir, "job_batch_c", seed=3),
    ]
    default_storage.save(cancel_marker_key(jobs[2].output_prefix), ContentFile(b"canceled"))
    # when they run as one batch
    outcomes = runner.run_jobs(
        [(job, 2) for job in jobs], storage=default_storage, abandon=abandon_batch, send=events
    )
    # then the canceled one never started and the others succeeded, each reported on its own
    assert outcomes == ["succeeded", "succeeded", "canceled"]
    reported = [(name, kw["job_id"]) for _, name, kw in events if name != JobProgress.TASK]
    for job_id in ("job_batch_a", "job_batch_b"):
        mine = [name for name, reported_id in reported if reported_id == job_id]
        assert mine == [JobReceived.TASK, JobStarted.TASK, JobSucceeded.TASK]
    assert all(job_id != "job_batch_c" for _, job_id in reported)
    # and each one's images are under its own prefix, from its own seeds
    succeeded = {kw["job_id"]: kw for _, name, kw in events if name == JobSucceeded.TASK}
    # (the two that ran shared the batch, which their metrics say for the scaling signal)
    assert [succeeded[job.job_id]["metrics"]["batch_size"] for job in jobs[:2]] == [2, 2]
    for job, count in ((jobs[0], 2), (jobs[1], 1)):
        keys = succeeded[job.job_id]["output_keys"]
        assert keys == [f"{job.output_prefix}{index}.png" for index in range(count)]
        for index, key in enumerate(keys):
            with default_storage.open(key, "rb") as handle:
                record = json.loads(Image.open(io.BytesIO(handle.read())).text["sdsaas"])
            assert (record["job_id"], record["seed"]) == (job.job_id, job.input.seed + index)


def test_a_batch_that_fails_for_one_jobs_reason_runs_its_jobs_one_by_one(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, settings: Any, tmp_path: Path
) -> None:
    # given a batch that the pipeline refuses as a whole (as out of memory would), traced
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise inference.InvalidRequest("no room for this batch")

    monkeypatch.setattr(inference, "generate_batch", refused)
    exported = tmp_path / "spans.jsonl"
    settings.OTEL_EXPORTER = f"file:{exported}"
    events = Events()
    jobs = [message(tiny_model_dir, f"job_fallback_{n}", seed=n) for n in range(2)]
    # when it runs, then each job runs alone and succeeds on its own
    outcomes = runner.run_jobs(
        [(job, 1) for job in jobs], storage=default_storage, abandon=abandon_batch, send=events
    )
    assert outcomes == ["succeeded", "succeeded"]
    succeeded = [kw for _, name, kw in events if name == JobSucceeded.TASK]
    assert sorted(kw["job_id"] for kw in succeeded) == ["job_fallback_0", "job_fallback_1"]
    # and each waited in its queue once: one queue wait in its metrics and its trace
    assert all(kw["metrics"]["queue_s"] >= 0 for kw in succeeded)
    spans = [json.loads(line) for line in exported.read_text().splitlines()]
    waits = sorted(s["attributes"]["job_id"] for s in spans if s["name"] == "job.queue_wait")
    assert waits == ["job_fallback_0", "job_fallback_1"]


def test_a_batch_run_one_by_one_that_then_raises_says_how_the_jobs_before_ended(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a batch refused as a whole, whose second job's upload then fails for good (S3 away)
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise inference.InvalidRequest("no room for this batch")

    upload = runner.upload

    def outage_for_the_second(run: runner.JobRun, encoded: Any) -> list[str]:
        if run.message.job_id == "job_partly_1":
            raise OSError("S3 away")
        return upload(run, encoded)

    monkeypatch.setattr(inference, "generate_batch", refused)
    monkeypatch.setattr(runner, "upload", outage_for_the_second)
    jobs = [message(tiny_model_dir, f"job_partly_{n}", seed=n) for n in range(3)]
    # when it runs, then the error is raised with how the first job ended: it succeeded
    with pytest.raises(runner.PartlyRun) as raised:
        runner.run_jobs(
            [(job, 1) for job in jobs],
            storage=default_storage,
            abandon=abandon_batch,
            send=Events(),
        )
    assert raised.value.outcomes == {0: "succeeded"}
    assert isinstance(raised.value.error, OSError)


def test_a_batch_out_of_memory_halves_its_key_s_batches_and_its_jobs_alone_teach_the_rate(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given this worker's budget fresh, and a batch of four that runs out of memory
    budget = BatchBudget()
    monkeypatch.setattr(runner, "BUDGET", budget)

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(inference, "generate_batch", out_of_memory)
    jobs = [message(tiny_model_dir, f"job_oom_{n}", seed=n) for n in range(4)]
    key = runner.batch_key(jobs[0])
    assert key is not None and budget.room(key, 1, budget_s=60) == 0
    # when it runs, then each job runs alone and succeeds
    outcomes = runner.run_jobs(
        [(job, 1) for job in jobs], storage=default_storage, abandon=abandon_batch, send=Events()
    )
    assert outcomes == ["succeeded"] * 4
    # and the key's batches now hold two images at most, at the rate its jobs ran alone
    assert budget.room(key, 1, budget_s=60) == 1


def test_a_batch_run_one_by_one_tells_its_abandon_which_job_runs_and_how_the_others_ended(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a batch the pipeline refuses as a whole, and watchdogs that, as each one's work
    # leaves it, ask what its abandon would be told then
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise inference.InvalidRequest("no room for this batch")

    told: list[tuple[str, list[int], dict[int, str]]] = []

    class Asking(watchdog.JobWatchdog):
        def __exit__(self, *exc: Any) -> None:
            self._abandon("timeout")
            super().__exit__(*exc)

    monkeypatch.setattr(inference, "generate_batch", refused)
    monkeypatch.setattr(runner, "JobWatchdog", Asking)
    jobs = [message(tiny_model_dir, f"job_told_{n}", seed=n) for n in range(3)]
    # when it runs
    runner.run_jobs(
        [(job, 1) for job in jobs],
        storage=default_storage,
        abandon=lambda reason, running, finished: told.append((reason, running, finished)),
        send=Events(),
    )
    # then the batch's abandon would settle all three as running, and each single run's only
    # its own, the ones before it as they ended
    assert told == [
        ("timeout", [0, 1, 2], {}),
        ("timeout", [0], {}),
        ("timeout", [1], {0: "succeeded"}),
        ("timeout", [2], {0: "succeeded", 1: "succeeded"}),
    ]


def sent_events(tasks: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The events of the control queue's tasks, in order: (their own task's name, their fields);
    the tasks that carried several, one each."""
    events = []
    for task in tasks:
        if task["task"] == TASK_JOB_EVENTS:
            decoded = [event_from_wire(data) for data in task["kwargs"]["events"]]
            events += [(event.TASK, event.to_wire()) for event in decoded if event is not None]
        else:
            events.append((task["task"], task["kwargs"]))
    return events


def test_a_batch_s_outcomes_go_as_one_message_and_after_the_control_queue_was_deleted_too(
    local_aws: Any,
) -> None:
    # given a worker that sent outcomes together (kombu now caches the control queue's URL),
    # then the queue deleted
    worker_events.send_events([JobReceived("job_batch_0", 1), *failed("job_batch_0", "job_b")])
    url = local_aws.queue_url(control_queue_name())
    local_aws.client("sqs").delete_queue(QueueUrl=url)
    # when a batch of three jobs reports its outcomes together
    outcomes = [
        JobSucceeded(f"job_batch_{n}", 1, output_keys=[f"k{n}"], metrics={}) for n in range(3)
    ]
    worker_events.send_events(outcomes)
    # then the send to the gone queue was tried again, and the three went to the queue created
    # again as one task, in order, each as it goes alone
    tasks = local_aws.drain_tasks(control_queue_name())
    assert [task["task"] for task in tasks] == [TASK_JOB_EVENTS]
    assert sent_events(tasks) == [(JobSucceeded.TASK, outcome.to_wire()) for outcome in outcomes]


def failed(*job_ids: str) -> list[JobFailed]:
    code = FailureCode.INTERNAL_ERROR
    return [JobFailed(job_id, 1, code=code, message="x") for job_id in job_ids]


def test_a_batch_s_interim_events_go_together_from_the_event_thread_each_job_in_order(
    local_aws: Any,
) -> None:
    # given the control queue empty
    local_aws.drain_tasks(control_queue_name())
    jobs = [f"job_interim_{n}" for n in range(3)]
    # when a batch of three reports received, then started, then its outcomes, as the runner does
    worker_events.send_events([JobReceived(job, 1) for job in jobs])
    worker_events.send_events([JobStarted(job, 1, load_s=0.1) for job in jobs])
    worker_events.send_events(failed(*jobs))
    # then the nine events went in at most three messages, and each job's arrived in order
    tasks = local_aws.drain_tasks(control_queue_name())
    events = sent_events(tasks)
    assert len(events) == 9 and len(tasks) <= 3, tasks
    for job in jobs:
        assert [name for name, fields in events if fields["job_id"] == job] == [
            JobReceived.TASK,
            JobStarted.TASK,
            JobFailed.TASK,
        ]


def test_events_past_one_message_s_share_go_in_more_than_one(local_aws: Any) -> None:
    # given the control queue empty
    local_aws.drain_tasks(control_queue_name())
    # when more outcomes than one message holds are sent together
    outcomes = failed(*(f"job_many_{n}" for n in range(worker_events.EVENTS_PER_MESSAGE + 3)))
    publish_all(outcomes)
    # then they went as two tasks, every one once
    tasks = local_aws.drain_tasks(control_queue_name())
    assert len(tasks) == 2
    assert sorted(fields["job_id"] for _, fields in sent_events(tasks)) == sorted(
        outcome.job_id for outcome in outcomes
    )
