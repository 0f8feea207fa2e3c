"""The API benchmark's baseline (`python -m bench.api`): the least a job API must do.

A bare DRF view that authenticates the API key exactly as the API does (the same
`ApiKeyAuthentication`: one lookup of the key by prefix, its hash compared) and INSERTs one job
row, and one that reads a job row by its id. Served by the same gunicorn configuration with the
project's settings and this package's URLs (`DJANGO_SETTINGS_MODULE=bench.api_baseline.settings`).

The application never imports it: `bench/` is not part of the installed packages, and only the
baseline's gunicorn is pointed at these settings.
"""
