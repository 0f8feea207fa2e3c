"""GPU worker pools (not a Django app; no database credentials).

A worker consumes `<prefix>-model-<slug>` queues. Each message is the Celery task
`sdsaas.contract.TASK_GPU_GENERATE` with one keyword argument `job`: a
`sdsaas.contract.JobMessage`, built by `jobs.services.dispatch.job_message`. It reports back with
the contract's events (gpu_worker/events.py).

- app.py, worker.py: its own Celery app and entry point (the web application is never booted);
- tasks.py: the task: decode, hold the message (heartbeat.py), run, settle the message;
- runner.py: one job as named steps (load, generate, encode, upload, report);
- watchdog.py: the job's time limit, the stop grace and cancel; retry.py: S3/SQS outages;
- loading.py, model_store/, inference.py, prompts.py: weights on disk, pipelines in memory,
  generation, prompts of any length.
"""
