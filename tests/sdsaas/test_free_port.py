"""`devstack.free_port`: the port a test or benchmark gives a server it starts later."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sdsaas import devstack


def test_free_ports_are_bindable_and_below_the_ephemeral_range() -> None:
    # given the kernel's first port for outgoing connections
    start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if start <= 1024:
        pytest.skip(f"this host's ephemeral ports start at {start}: no port lies below them")
    # when ports are asked for, then each is below it (no outgoing connection can take it
    # meanwhile) and can be bound
    for _ in range(20):
        port = devstack.free_port()
        assert 1024 <= port < start
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
