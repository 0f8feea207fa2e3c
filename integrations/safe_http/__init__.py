"""SSRF-safe HTTPS GET for URLs that tenants give us (img2img inputs, later webhook targets).

A tenant-supplied URL must never become a way to read our network: the instance metadata
service, the VPC, loopback services. So each hop is resolved once, every resolved address is
checked, and the connection goes to an address that was checked (the HTTP library gets an IP,
never the name, so a second DNS answer cannot swap in another address), while TLS still sends
SNI and verifies the certificate for the name in the URL. Redirects are followed here, hop by
hop, with the same checks.

Pure Python on urllib3: no Django, so the control worker and any other process can use it.

The flow, one module a stage: target.py parses the URL of a hop, addresses.py resolves its
host and checks every address (the address policy), client.py connects to a checked address
and follows redirects, response.py reads the answer; errors.py holds the one exception.
"""

from __future__ import annotations

from integrations.safe_http.addresses import address_is_public
from integrations.safe_http.client import fetch
from integrations.safe_http.errors import FetchError
from integrations.safe_http.response import Fetched

__all__ = ["FetchError", "Fetched", "address_is_public", "fetch"]
