"""A scripted HTTPS server on 127.0.0.1 for the API client's transport tests: real TLS
(certificates from a throwaway engine CA), routes answered by test functions.

The engine API itself is served by tests/support/api_server.py; this stub exists for
what a real server will not do on demand (close an idle connection, present an
agent's certificate, answer garbage).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import queue
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine_lib import pki

# (handler, query, body bytes) -> (status, JSON document or bytes, extra headers)
Route = Callable[["Handler", dict, bytes], tuple]


def server_certificate(pki_dir: Path, unit: str, address: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """(key PEM, cert PEM) signed by the CA in ``pki_dir``: subject O=kestrel, OU=unit."""
    ca_cert = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kestrel"),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                                 x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

    def log_message(self, *args) -> None:
        pass

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        stub: Stub = self.server.stub  # type: ignore[attr-defined]
        stub.requests.append((self.command, self.path, dict(self.headers), body))
        route = stub.routes.get((self.command, parts.path))
        if route is None:
            status, answer, headers = 404, {"code": "NotFound", "message": "no route",
                                            "details": {}}, {}
        else:
            status, answer, headers = route(self, parse_qs(parts.query), body)
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        stub.connections.add(self.client_address)
        if headers.pop("X-Stub-Drop", None) or stub.drop_after_each:
            # An idle keep-alive connection closed by the server, without telling.
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def process_request_thread(self, request, client_address) -> None:
        super().process_request_thread(request, client_address)  # closes it at the end
        self.stub.closed.put(client_address)  # type: ignore[attr-defined]


class Stub:
    def __init__(self, url: str, ca_file: str, pki_dir: Path) -> None:
        self.url, self.ca_file, self.pki_dir = url, ca_file, pki_dir
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.connections: set[int] = set()
        self.drop_after_each = False
        self.closed: queue.Queue = queue.Queue()  # client addresses, as the server closes them

    def route(self, method: str, path: str, answer: Route | tuple) -> None:
        self.routes[(method, path)] = answer if callable(answer) else (lambda *_: answer)


@contextlib.contextmanager
def serving(tmp_path_factory, unit: str = "api", address: str = "127.0.0.1") -> Iterator[Stub]:
    """A stub whose certificate has subject OU=``unit`` and names ``address``."""
    pki_dir = tmp_path_factory.mktemp("engine") / "pki"
    pki.init_ca(str(pki_dir))
    key, cert = server_certificate(pki_dir, unit, address)
    (pki_dir / "server.key").write_bytes(key)
    (pki_dir / "server.pem").write_bytes(cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki_dir / "server.pem", pki_dir / "server.key")
    server = _Server(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    stub = Stub(f"https://127.0.0.1:{server.server_address[1]}", str(pki_dir / "ca.pem"), pki_dir)
    server.stub = stub  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
