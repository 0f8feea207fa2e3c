"""The control plane's services, one module per stage of a job's flow:

- `submit`: resolve and validate a request, create the job (idempotent), reserve its credits;
- `uploads`: input images uploaded for img2img;
- `idempotency`: the `Idempotency-Key` mechanism both of them use;
- `dispatch`: admission into a tenant's free slots, the GPU message, publishing after commit, the
  sweeper of failed publishes;
- `image_fetch`: img2img images given by URL, fetched into S3 before dispatch;
- `lifecycle`: the state machine, the one place where a job's final state is decided (GPU events,
  cancel, the dead-letter sweep);
- `reconcile`: admitted jobs whose queue message is gone;
- `common`: the tenant lock and the job's event log.

Lock order, to stay free of deadlocks: every service that changes a tenant's jobs or credits locks
the tenant row first (`common.lock_tenant`), then touches credit and job rows.
"""
