"""Wiring: settings, urls, the shared Celery app, queue and task names, the API's error shape.

The shared Celery app (`sdsaas.celery`) is not imported here: GPU workers import this package
too (settings, queue names) and must not build it (it registers the control tasks and installs
Celery's Django fix-up). `celery -A sdsaas` finds it as `sdsaas.celery`; the web code imports it
where it publishes.
"""
