"""FetchError, the one exception fetch and post raise, and the errors more than one stage
builds."""

from __future__ import annotations

from urllib3.exceptions import HTTPError, NewConnectionError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError


class FetchError(Exception):
    """A fetch that did not produce a body, or a post that got no HTTP answer.

    `code` is a short machine code; `retryable` says whether trying again later can help
    (timeouts, connection failures, and for fetch 5xx and 429). The message is safe to show the
    tenant: it names only hosts from the URLs it was given or redirected to, never a resolved
    address.
    """

    def __init__(
        self, code: str, message: str, *, retryable: bool = False, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status  # the HTTP status, for code "http_status"


def map_error(hostname: str, exc: HTTPError) -> FetchError:
    # The library's own messages name the pinned IP address; the tenant sees only the host.
    if isinstance(exc, SSLError):
        return FetchError("tls_failed", f"the TLS connection to {hostname} failed")
    if isinstance(exc, NewConnectionError):
        return FetchError("connect_failed", f"could not connect to {hostname}", retryable=True)
    if isinstance(exc, Urllib3TimeoutError):  # connect and read timeouts both
        return timeout_error(hostname)
    return FetchError("connect_failed", f"the connection to {hostname} failed", retryable=True)


def timeout_error(hostname: str) -> FetchError:
    return FetchError("timeout", f"{hostname} did not answer in time", retryable=True)
