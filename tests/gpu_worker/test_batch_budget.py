"""A micro-batch's latency budget (gpu_worker/batch_budget.py), on constructed runs."""

from __future__ import annotations

from gpu_worker.batch_budget import CAP_LIFT_AFTER, BatchBudget, Takes

KEY = ("tiny", 512, 512, 25)


def test_a_key_never_run_here_has_no_room_so_its_first_job_runs_alone() -> None:
    assert BatchBudget().room(KEY, 1, budget_s=60) == 0


def test_a_batch_takes_the_images_that_end_within_the_budget_at_its_key_s_rate() -> None:
    # given a key whose last run denoised 2 images in 1 s
    budget = BatchBudget()
    budget.ran(KEY, images=2, seconds=1.0)
    # then 5 s hold 10 images: 9 more beside a job of one, 6 beside a job of four
    assert budget.room(KEY, 1, budget_s=5) == 9
    assert budget.room(KEY, 4, budget_s=5) == 6
    # and a job that alone fills the budget takes nobody in, nor does a budget of 0
    assert budget.room(KEY, 10, budget_s=5) == 0
    assert budget.room(KEY, 1, budget_s=0) == 0
    # and another key is not this one
    assert budget.room(("tiny", 64, 64, 2), 1, budget_s=5) == 0


def test_the_rate_follows_the_newest_runs() -> None:
    budget = BatchBudget()
    budget.ran(KEY, images=1, seconds=1.0)
    budget.ran(KEY, images=4, seconds=1.0)  # 0.25 s an image: the rate is now 0.625
    assert budget.room(KEY, 0, budget_s=5) == 8
    budget.ran(KEY, images=4, seconds=1.0)  # 0.4375
    assert budget.room(KEY, 0, budget_s=5) == 11


def test_a_batch_out_of_memory_holds_its_key_to_half_its_images_and_again_to_half_that() -> None:
    budget = BatchBudget()
    budget.ran(KEY, images=1, seconds=0.1)
    budget.out_of_memory(KEY, images=8)
    assert budget.room(KEY, 1, budget_s=60) == 3
    budget.out_of_memory(KEY, images=4)
    assert budget.room(KEY, 1, budget_s=60) == 1
    # a larger batch failing later (another worker's setting) does not loosen the cap
    budget.out_of_memory(KEY, images=16)
    assert budget.room(KEY, 1, budget_s=60) == 1
    budget.out_of_memory(KEY, images=2)
    assert budget.room(KEY, 1, budget_s=60) == 0


def test_a_worker_takes_its_whole_room_while_what_it_takes_joins_and_less_as_it_does_not() -> None:
    takes = Takes()
    assert takes.limit(7) == 7 and takes.limit(0) == 0
    # when none of 7 taken joined, twice: the fraction is a quarter
    takes.took(received=7, joined=0)
    takes.took(received=7, joined=0)
    assert takes.limit(7) == 2
    # and when all joined again, it grows back
    takes.took(received=2, joined=2)
    assert takes.limit(7) == 4


def test_a_worker_whose_takes_never_join_still_probes_now_and_then() -> None:
    takes = Takes()
    for _ in range(10):
        takes.took(received=4, joined=0)
    limits = [takes.limit(4) for _ in range(2 * Takes.PROBE_EVERY)]
    assert limits.count(1) == 2 and limits.count(0) == 2 * Takes.PROBE_EVERY - 2


def test_a_memory_cap_grows_by_one_image_after_enough_batches_fill_it_and_halves_again() -> None:
    # given a key capped at 4 images by a batch of 8 that ran out of memory
    budget = BatchBudget()
    budget.ran(KEY, images=1, seconds=0.1)
    budget.out_of_memory(KEY, images=8)
    # when batches below the cap run, however many: the cap stays
    for _ in range(CAP_LIFT_AFTER):
        budget.ran(KEY, images=3, seconds=0.3)
    assert budget.room(KEY, 0, budget_s=60) == 4
    # and when one batch short of enough fill it, then one more does: it grows by one image
    for _ in range(CAP_LIFT_AFTER - 1):
        budget.ran(KEY, images=4, seconds=0.4)
    assert budget.room(KEY, 0, budget_s=60) == 4
    budget.ran(KEY, images=4, seconds=0.4)
    assert budget.room(KEY, 0, budget_s=60) == 5
    # and a batch at the new cap that runs out halves it, and the count starts again
    for _ in range(CAP_LIFT_AFTER - 1):
        budget.ran(KEY, images=5, seconds=0.5)
    budget.out_of_memory(KEY, images=5)
    budget.ran(KEY, images=2, seconds=0.2)
    assert budget.room(KEY, 0, budget_s=60) == 2
