"""Webhooks: tenants' endpoints receive signed job events (Standard Webhooks).

The flow: the lifecycle announces a job's state change (jobs/announcements.py) -> services/outbox
writes one message per subscribed endpoint in the same transaction -> services/dispatch hands
due messages to the webhooks queue, fairly per endpoint, on a durable schedule in Postgres ->
services/delivery signs and sends one attempt through the SSRF-safe client and logs it.
"""
