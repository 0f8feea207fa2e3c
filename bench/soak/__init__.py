"""`make soak`: the chaos soak. Jobs through the real API while busy GPU workers are SIGKILLed.

A fresh local stack in a temporary folder (sdsaas.devstack's pieces: moto_server, the API under
gunicorn, the control worker, beat with its sweeps, GPU workers on the tiny model's queue), on a
SQLite file of its own, or on the database at DATABASE_URL when that is set (CI's Postgres; the
soak's tenants are new ones, and only they are checked). Several tenants submit their jobs
through the HTTP API at once; admission holds each to its concurrency cap. The queues' base
visibility timeout is short (`--visibility`), as the GPU workers' heartbeat allows.

The chaos: every `--kill-every` seconds (jittered by +-50 %), the next GPU worker seen in the
middle of a job (its log shows `job <id> attempt <n>` and not yet the task's end; the database
shows the job in flight) gets SIGKILL, as a lost spot node does, and a fresh process takes its
place at once. No job is killed twice: a job killed on each of its SQS_MAX_RECEIVES deliveries
fails `worker_lost` by design, which is the poison path, not this soak's. So every job must end
`succeeded`; any other end counts as `failed`. The chaos stops when `--calm-tail` or fewer jobs
are left (or after `--max-run` seconds, which bounds the run); the rest then finish undisturbed,
and a job still not final once `--drain` seconds went by without any job finishing counts as
`lost` (a stall, not a slow machine).

Checks at the end, per job and per tenant: the job's usage records equal the images it produced,
it reached a final state once (`double_metered` counts the jobs that fail either), and each
tenant's credit periods show `used` equal to its images and nothing left `reserved`.

Times of a killed job, from its SIGKILL: `recovery` to the job's completion as the API shows it
(`completed_at`, stamped when the control worker applies the worker's event); `redelivery` to
the next delivery's start on a worker, and `gpu_recovery` to the end of the run that finished
it (both from the workers' logs). `event_lag`: from a job's end on its worker to `completed_at`.
`extra_deliveries`: deliveries that no kill explains (attempt - 1 - kills of the job, or of a
micro-batch it ran in); `double_runs`: jobs that ran on two workers at once.

Prints progress, a table, and one JSON line last; exits 1 on any loss, failure, double metering
or credit mismatch. GPU workers run one CPU thread each (each stands for one GPU).
"""

# The package follows the run: stack.py starts the local stack and the soak's tenants, workers.py
# holds the GPU worker slots (started, killed, their logs read), chaos.py submits the jobs and
# kills workers until every job is final, checks.py reads back what became of the jobs (metering,
# credits), timings.py measures recovery from the workers' logs, and report.py prints the table
# and the JSON line; __main__.py is `python -m bench.soak`.
