"""Webhook services, one module per stage of a message's flow:

- endpoints: tenants' endpoints and secrets (create, change, rotate, delete, test event);
- outbox: the lifecycle's announcements become messages, inside the job's transaction;
- dispatch: the durable schedule: due messages go to the webhooks queue, fairly per endpoint;
- delivery: one attempt of one message: sign, send, log, and what comes next.
"""
