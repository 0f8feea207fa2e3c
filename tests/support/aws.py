"""The local SQS/S3-compatible server (moto_server) behind a TCP proxy the tests can cut.

Cutting the proxy is a real outage of the endpoint (connections refused) while moto keeps its
state, as SQS does during a network partition.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3

from sdsaas.broker.sqs import decode_task
from sdsaas.devstack import free_port


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target port; `stop()` refuses and drops connections."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(128)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # shutdown() first: on Linux, close() alone leaves a thread blocked in accept()
            # holding the socket, which then keeps accepting connections.
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class LocalAws:
    """A moto_server process and the proxy in front of it."""

    def __init__(self) -> None:
        self.moto_port = free_port()
        binary = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
        self.process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(self.moto_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"},
        )
        wait_for_port(self.moto_port)
        self.proxy = TcpProxy(self.moto_port)
        self.proxy.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def client(self, service: str) -> Any:
        # Straight to moto, not through the proxy: tests read state even during an outage.
        return boto3.client(
            service,
            endpoint_url=f"http://127.0.0.1:{self.moto_port}",
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def close(self) -> None:
        self.proxy.stop()
        self.process.terminate()
        self.process.wait(timeout=10)

    def queue_url(self, name: str) -> str | None:
        sqs = self.client("sqs")
        try:
            return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])
        except sqs.exceptions.QueueDoesNotExist:
            return None

    def drain_tasks(self, queue_name: str, *, attributes: bool = False) -> list[dict[str, Any]]:
        """Receive every message of a queue and decode the Celery tasks (name and kwargs; with
        `attributes`, the message's SQS attributes too)."""
        url = self.queue_url(queue_name)
        if url is None:
            return []
        sqs = self.client("sqs")
        tasks: list[dict[str, Any]] = []
        while True:
            batch = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=300,
                WaitTimeSeconds=0,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not batch:
                return tasks
            for message in batch:
                task, kwargs = decode_task(message["Body"])
                tasks.append({"task": task, "kwargs": kwargs})
                if attributes:
                    tasks[-1]["attributes"] = message.get("MessageAttributes", {})
