"""The project's settings, with the baseline's URLs: the same middleware, database and DRF."""

from sdsaas.settings import *  # noqa: F403

ROOT_URLCONF = "bench.api_baseline.urls"
