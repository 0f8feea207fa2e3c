"""A real HTTPS server on loopback with a certificate from a test CA made on the spot."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Only in the server certificate's SANs, so that a test can pass TLS under a made-up name.
PINNED_NAME = "pinned.test"


S = TypeVar("S", bound="HttpsServer")


@dataclass(frozen=True)
class Tls:
    ca_file: str
    cert_file: str
    key_file: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls(directory: Path) -> Tls:
    """A CA and a server certificate for localhost, 127.0.0.1 and PINNED_NAME, as PEM files."""
    ca_key, ca_cert = _make_ca()
    key, cert = _make_server_cert(ca_key, ca_cert)
    tls = Tls(
        ca_file=str(directory / "ca.pem"),
        cert_file=str(directory / "server.pem"),
        key_file=str(directory / "server.key"),
    )
    Path(tls.ca_file).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    Path(tls.cert_file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(tls.key_file).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tls


def _valid_for_a_day(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    # From a few minutes back, for clocks a little behind.
    now = datetime.datetime.now(datetime.UTC)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign server certificates, and nothing below them."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("sdsaas test CA"))
        .issuer_name(_name("sdsaas test CA"))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, _valid_for_a_day(builder).sign(key, hashes.SHA256())


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate, signed by the CA, for localhost, 127.0.0.1 and PINNED_NAME."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName("localhost"),
        x509.DNSName(PINNED_NAME),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return key, _valid_for_a_day(builder).sign(ca_key, hashes.SHA256())


class HttpsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.accepted = 0  # TCP connections, counted before the TLS handshake
        self.paths: list[str] = []
        self.hosts: list[str] = []
        self.release = threading.Event()  # ends the handlers that stall

    def get_request(self) -> tuple[Any, Any]:
        self.accepted += 1
        return super().get_request()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up mid-body is what several tests do on purpose

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler of the tests' servers: it logs nothing, and answers in one call."""

    server: HttpsServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply_head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def reply(self, status: int, body: bytes, content_type: str) -> None:
        self.reply_head(status, {"Content-Type": content_type, "Content-Length": str(len(body))})
        self.wfile.write(body)

    def redirect(self, status: int, location: str) -> None:
        self.reply_head(status, {"Location": location, "Content-Length": "0"})


def use_tls(httpd: HttpsServer, tls: Tls) -> None:
    """Make `httpd` answer over TLS with the test CA's server certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)


@contextlib.contextmanager
def serve_https(handler: type[BaseHTTPRequestHandler], tls: Tls) -> Iterator[HttpsServer]:
    """Serve `handler` over TLS on 127.0.0.1 in a thread until the block ends."""
    httpd = HttpsServer(handler)
    use_tls(httpd, tls)
    with serving(httpd):
        yield httpd


@contextlib.contextmanager
def serving(httpd: S) -> Iterator[S]:
    """Run `httpd` in a thread until the block ends; stalled handlers are released first."""
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
