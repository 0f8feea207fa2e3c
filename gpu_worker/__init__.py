"""GPU worker pools (not a Django app; no database credentials).

A worker consumes `<prefix>-model-<slug>` queues. Each message is the Celery task
`sdsaas.queues.TASK_GPU_GENERATE` with one keyword argument `job`, built by
`jobs.services.job_message`: job id, attempt, kind, resolved input (seed always set), the model's
source URI, revision and hash, the LoRAs with their source URIs and weights, the img2img input key
in S3 and the output key prefix `tenants/<tenant>/jobs/<job>/`.
"""
