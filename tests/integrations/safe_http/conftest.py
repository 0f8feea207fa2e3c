"""Fixtures for the integrations.safe_http tests: the loopback servers and a connection log."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3.util.connection

from integrations.safe_http import address_is_public
from tests.integrations.safe_http.receiver import ReceiverServer, serve_receiver
from tests.integrations.safe_http.support import Handler, LocalServer
from tests.support.https import Tls, serve_https


@pytest.fixture
def server(tls: Tls) -> Iterator[LocalServer]:
    with serve_https(Handler, tls) as httpd:
        yield LocalServer(httpd=httpd, tls=tls)


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Where urllib3 opens sockets; a public address is refused here so no packet leaves."""
    seen: list[str] = []
    real: Callable[..., socket.socket] = urllib3.util.connection.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        seen.append(address[0])
        if address_is_public(address[0]):
            raise ConnectionRefusedError("test: no outside network")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)
    return seen


@pytest.fixture
def receiver(tls: Tls) -> Iterator[ReceiverServer]:
    """A webhook receiver over TLS (the test CA) on loopback."""
    with serve_receiver(tls) as httpd:
        yield httpd


@pytest.fixture
def plain_receiver() -> Iterator[ReceiverServer]:
    """A webhook receiver over plain http on loopback; a canary where nothing may connect."""
    with serve_receiver(None) as httpd:
        yield httpd
