"""The webhook tests' receiver: verifies with `standardwebhooks`, reachable over plain http."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.webhook_receiver import Receiver, webhook_receiver


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    with webhook_receiver() as receiver:
        settings.WEBHOOK_ALLOW_HOSTS = frozenset({receiver.host})
        yield receiver
