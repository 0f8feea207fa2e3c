"""Wiring: settings, urls, the shared Celery app, the API's error shape, the queue layer
(`broker/`) and the GPU <-> control contract (`contract/`).

The shared Celery app (`sdsaas.celery`) is not imported here: GPU workers import this package
too (settings, the contract, the queue layer) and must not build it (it registers the control
tasks and installs Celery's Django fix-up). `celery -A sdsaas` finds it as `sdsaas.celery`; the
web code imports it where it publishes.
"""
