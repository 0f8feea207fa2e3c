"""integrations.safe_http.target: which URLs are refused before any lookup or connection."""

from __future__ import annotations

import pytest

from integrations.safe_http import FetchError, fetch
from tests.integrations.safe_http.support import CAP, LocalServer


@pytest.mark.parametrize(
    "url",
    ["http://localhost:{port}/png", "ftp://localhost:{port}/png", "file:///etc/passwd"],
)
def test_only_https_is_allowed(server: LocalServer, url: str) -> None:
    # given a URL that is not https, to an allowed host
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch(url.format(port=server.port), max_bytes=CAP, allow_hosts=frozenset({"localhost"}))
    # then it is refused without a connection
    assert caught.value.code == "scheme_not_allowed"
    assert server.httpd.accepted == 0


def test_userinfo_is_refused(server: LocalServer) -> None:
    # given a URL carrying a user name and password
    url = f"https://user:secret@localhost:{server.port}/png"
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch(url, max_bytes=CAP, allow_hosts=frozenset({"localhost"}), ca_file=server.tls.ca_file)
    # then it is refused without a connection
    assert caught.value.code == "invalid_url"
    assert server.httpd.accepted == 0
