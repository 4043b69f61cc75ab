"""HTTPS transport of the agent API: mutual TLS against the engine CA, JSON bodies.

Only peers with a certificate signed by the engine CA, not revoked by its CRL,
get past the TLS handshake (CERT_REQUIRED, TLS 1.2+); of those, only the engine
itself (its certificate profile, engine_lib.protocol.certificates) gets an
answer: a host's or QEMU's certificate from the same CA gets 403. The CRL file
is re-read on the next connection after it changes. The handshake runs in the
request's own thread, so a client that connects and stalls cannot block
``accept()`` for everyone else.

JSON bodies are read whole, up to MAX_BODY. The two image routes that carry
bytes (an upload's PUT, an export's GET) stream them in 1 MiB pieces instead,
so an image of any size passes through bounded memory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import engine_lib
from engine_lib.agent import crl
from engine_lib.agent.api import Api
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.images import PIECE, Download
from engine_lib.protocol.certificates import engine_client_refusal
from engine_lib.protocol.errors import CertificateError, InvalidSpec, KestrelError

log = logging.getLogger("kestrel.agent.http")

MAX_BODY = 16 * 1024 * 1024
_LENGTH_RE = re.compile(r"[0-9]+")
HANDSHAKE_TIMEOUT = 10.0


def server_context(config: AgentConfig) -> ssl.SSLContext:
    """TLS server context: our certificate; client certificates required from the CA and
    checked against its CRL when there is one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    where = f"{config.source} [pki]"
    try:
        context.load_cert_chain(config.cert, config.key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidSpec(f"{where} cert/key", f"cannot load {config.cert} with key "
                                               f"{config.key}: {exc}") from None
    try:
        context.load_verify_locations(cafile=config.ca)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidSpec(f"{where} ca", f"cannot load the engine CA {config.ca}: {exc}") from None
    if config.crl and os.path.exists(config.crl):
        with open(config.crl, "rb") as handle:
            crl.verify(handle.read(), config.ca, f"{where} crl")
        try:
            context.load_verify_locations(cafile=config.crl)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidSpec(f"{where} crl", f"cannot load {config.crl}: {exc}") from None
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def _file_state(path: str) -> tuple | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: AgentConfig, context: ssl.SSLContext, api: Api):
        self.ssl_context = context
        self.api = api
        self.config = config
        self._crl_state = _file_state(config.crl) if config.crl else None
        if ":" in config.address:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((config.address, config.port), AgentRequestHandler)
        except OSError as exc:
            raise KestrelError(f"cannot listen on {config.address}:{config.port}: "
                               f"{exc.strerror or exc}", address=config.address,
                               port=config.port) from None

    def get_request(self):
        sock, address = self.socket.accept()
        self._reload_if_crl_changed()
        return self.ssl_context.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False), address

    def _reload_if_crl_changed(self) -> None:
        """A new CRL (pushed by the engine or written by host deploy) applies from the
        next connection; one that does not load leaves the previous context."""
        if not self.config.crl:
            return
        state = _file_state(self.config.crl)
        if state == self._crl_state:
            return
        self._crl_state = state
        try:
            self.ssl_context = server_context(self.config)
        except KestrelError as exc:
            log.error("kept the previous TLS settings: %s", exc.message)
            return
        log.info("loaded the engine CA's revocation list %s", self.config.crl)

    def finish_request(self, request, client_address):
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            log.warning("refused TLS connection from %s: %s", client_address[0],
                        getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
                        or exc)
            return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        log.exception("error while serving %s", client_address[0])


class AgentRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"kestrel-agent/{engine_lib.__version__}"
    timeout = 120  # idle keep-alive connections are closed after this
    # Headers and body go out as two writes: with Nagle on, the body waits for the
    # client's delayed ACK, 40 ms on every answer.
    disable_nagle_algorithm = True
    server: AgentServer

    def setup(self):
        super().setup()
        self.refusal = engine_client_refusal(self.connection.getpeercert(),
                                             self.connection.getpeercert(binary_form=True))

    def parse_request(self) -> bool:
        """Only the engine gets an answer; any other certificate of the CA gets 403."""
        if not super().parse_request():
            return False
        if self.refusal is None:
            return True
        log.warning("refused %s %s from %s: %s", self.command, self.path, self._peer(),
                    self.refusal)
        self.close_connection = True
        self._send(403, {"error": CertificateError(
            f"this agent answers only the engine's certificate: {self.refusal}").to_dict()})
        return False

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        api = self.server.api
        streamed = api.stream_kind(self.command, url.path) == "in"
        try:
            if streamed:
                length, body = self._length(None), b""
            else:
                length, body = 0, self._read_body()
        except InvalidSpec as exc:
            self.close_connection = True  # the unread body would corrupt the next request
            self._send(413 if "too large" in exc.reason else 400, {"error": exc.to_dict()})
            return
        status, document = api.handle(self.command, url.path, parse_qs(url.query), body,
                                      stream=self.rfile if streamed else None, length=length)
        if streamed and status != 200:
            self.close_connection = True  # the body may be unread, or cut off
        try:
            if isinstance(document, Download):
                self._send_file(document)
            else:
                self._send(status, document)
        except OSError as exc:  # ssl.SSLError included
            # The client gave up (its timeout) while we worked; the work is done.
            log.warning("%s went away before the answer to %s %s (%s)", self._peer(),
                        self.command, url.path, exc)
            self.close_connection = True

    def _read_body(self) -> bytes:
        length = self._length(MAX_BODY)
        return self.rfile.read(length) if length else b""

    def _length(self, limit: int | None) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise InvalidSpec("body", "chunked transfer encoding is not supported; "
                                      "send Content-Length")
        text = self.headers.get("Content-Length", "0").strip()
        # ASCII digits only: str.isdigit() takes '²', which int() then refuses.
        if not _LENGTH_RE.fullmatch(text):
            raise InvalidSpec("Content-Length", f"{text[:40]!r} is not a length")
        if limit is None:
            if len(text) > 18:
                raise InvalidSpec("body", f"too large ({text[:20]} bytes)")
            return int(text)
        length = int(text) if len(text) <= 12 else limit + 1
        if length > limit:
            raise InvalidSpec("body", f"too large ({text[:20]} bytes; limit {limit})")
        return length

    def _send_file(self, download: Download) -> None:
        """Stream an export's file; a client that goes away just ends it."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(download.length))
            self.end_headers()
            done = 0
            while done < download.length:
                piece = os.pread(download.fd, min(PIECE, download.length - done), done)
                if not piece:  # the file shrank: the client sees a short body
                    self.close_connection = True
                    break
                self.wfile.write(piece)
                done += len(piece)
        finally:
            os.close(download.fd)

    def _send(self, status: int, document: dict) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _peer(self) -> str:
        try:
            subject = dict(item for rdn in self.connection.getpeercert()["subject"]
                           for item in rdn)
            return f"{self.client_address[0]} ({subject.get('commonName', '?')})"
        except (AttributeError, KeyError, TypeError, ValueError):
            return self.client_address[0]

    def log_message(self, format, *args):
        log.info("%s %s", self._peer(), format % args)
