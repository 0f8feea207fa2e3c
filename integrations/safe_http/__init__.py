"""SSRF-safe HTTPS GET and POST for URLs that tenants give us (img2img inputs, webhook targets).

A tenant-supplied URL must never become a way to read our network: the instance metadata
service, the VPC, loopback services. So each hop is resolved once, every resolved address is
checked, and the connection goes to an address that was checked (the HTTP library gets an IP,
never the name, so a second DNS answer cannot swap in another address), while TLS still sends
SNI and verifies the certificate for the name in the URL. fetch() (GET) follows redirects
itself, hop by hop, with the same checks; post() never follows one, and check_url() vets a URL
before it is stored (post checks it again on every call: DNS answers change).

Pure Python on urllib3: no Django, so the control worker and any other process can use it.

The flow, one module a stage: target.py parses the URL of a hop (and holds the caller's
exemptions), addresses.py resolves its host and checks every address (the address policy),
exchange.py sends the request over a connection pinned to a checked address under the deadline,
response.py reads the answer; client.py strings the stages into the calls, and errors.py holds
the one exception.
"""

from __future__ import annotations

from integrations.safe_http.addresses import address_is_public
from integrations.safe_http.client import check_url, fetch, post
from integrations.safe_http.errors import FetchError
from integrations.safe_http.response import Fetched, Sent

__all__ = ["FetchError", "Fetched", "Sent", "address_is_public", "check_url", "fetch", "post"]
