"""The webhooks' Prometheus metrics, read at scrape time from the delivery log:
`sdsaas_webhook_attempts_window{outcome}`, attempts of the last WINDOW by outcome
(`succeeded`, `failed`: the receiver answered otherwise or not at all)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from django.db.models import Count
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from integrations.webhooks.models import WebhookAttempt

WINDOW = dt.timedelta(minutes=15)


class WebhooksCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        attempts = GaugeMetricFamily(
            "sdsaas_webhook_attempts_window",
            f"Webhook delivery attempts in the last {int(WINDOW.total_seconds())} s, by outcome.",
            labels=["outcome"],
        )
        counts = dict(
            WebhookAttempt.objects.filter(started_at__gte=timezone.now() - WINDOW)
            .values_list("succeeded")
            .annotate(n=Count("id"))
        )
        attempts.add_metric(["succeeded"], counts.get(True, 0))
        attempts.add_metric(["failed"], counts.get(False, 0))
        yield attempts
