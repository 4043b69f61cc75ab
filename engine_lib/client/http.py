"""HTTPS to the engine API: one kept-alive connection, typed errors, the API's TLS peer.

Standard library only (modules and the inventory import it on controllers that
have neither the engine's database driver nor its PKI). The server must present
a certificate the CA (``ca_file``, else the system's) signed for the host name
dialled, whose subject has OU=api: an agent's certificate from the same engine
CA verifies too, but it is not the API.
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

from engine_lib.protocol.errors import CertificateError, KestrelError, rebuild

API_PREFIX = "/api/v1"
API_PROFILE = "api"  # the OU of the API's server certificate (pki profile)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify the peer against ``ca_file`` (or the system CAs) and its host name."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise KestrelError(f"ca_file: cannot load {ca_file}: {exc}", field="ca_file") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def api_refusal(peer: dict[str, Any] | None) -> str | None:
    """Why a verified TLS peer is not the engine API, or None when it is."""
    subject = [item for rdn in (peer or {}).get("subject", ()) for item in rdn]
    if ("organizationalUnitName", API_PROFILE) in subject:
        return None
    shown = ", ".join(f"{key}={value}" for key, value in subject) or "empty"
    return f"the server's certificate (subject {shown}) is not an engine API certificate " \
           f"(OU={API_PROFILE})"


def quote_path(value: Any) -> str:
    return quote(str(value), safe="")


def query_string(query: dict[str, Any] | None) -> str:
    """Drop None; booleans as the API reads them; lists as repeated keys."""
    pairs: list[tuple[str, str]] = []
    for key, value in (query or {}).items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is None:
                continue
            if isinstance(item, bool):
                item = "true" if item else "false"
            elif isinstance(item, (dict, list)):
                item = json.dumps(item)
            pairs.append((key, str(item)))
    return urlencode(pairs)


def error_from_response(status: int, body: bytes, reason: str = "") -> KestrelError:
    """The typed error an error body names (``{"code","message","details"}``)."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("code"), str) \
            and "message" in document:
        details = document.get("details")
        return rebuild(document["code"], str(document["message"]),
                       details if isinstance(details, dict) else {})
    text = body[:200].decode("utf-8", "replace").strip()
    return KestrelError(f"the engine API answered HTTP {status} {reason}: {text}".rstrip(": "),
                        status=status)


class Http:
    """Requests to one engine API; ``path`` is relative to /api/v1 (or includes it).

    Not thread-safe: one connection, re-opened when the server has closed it
    while idle (uvicorn drops a kept-alive connection after a few seconds).
    """

    def __init__(self, url: str, *, ca_file: str | None = None, timeout: float = 60,
                 token: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise KestrelError(f"engine_url: {url!r} is not an https:// URL", field="engine_url")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 443
        base = parts.path.rstrip("/")
        self.prefix = base if base.endswith(API_PREFIX) else base + API_PREFIX
        self.timeout = timeout
        self.token = token
        self._context = tls_context(ca_file)
        self._connection: http.client.HTTPSConnection | None = None

    # -- requests -----------------------------------------------------------

    def json(self, method: str, path: str, query: dict[str, Any] | None = None,
             body: Any = None) -> tuple[int, Any]:
        """One request with a JSON body (or none); (status, decoded answer)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        connection = self._kept_connection()
        response = self._send(connection, method, path, query, data, headers)
        payload = response.read()
        if response.will_close:
            self.close()
        if response.status >= 400:
            raise error_from_response(response.status, payload, response.reason)
        if not payload:
            return response.status, None
        try:
            return response.status, json.loads(payload)
        except ValueError:
            raise KestrelError(f"the engine API answered {method} {path} with "
                               "a body that is not JSON") from None

    def open(self, method: str, path: str, query: dict[str, Any] | None = None,
             body: BinaryIO | None = None, length: int | None = None,
             headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """A streamed request on a connection of its own; the caller reads and closes
        the response. ``body`` is a file sent as ``length`` bytes."""
        all_headers = dict(headers or {})
        if body is not None:
            if length is None:
                raise ValueError("a streamed body needs its length")
            all_headers["Content-Length"] = str(length)
            all_headers.setdefault("Content-Type", "application/octet-stream")
        connection = self._new_connection()
        try:
            response = self._send(connection, method, path, query, body, all_headers)
        except BaseException:
            connection.close()
            raise
        if response.status >= 400:
            payload = response.read(65536)
            connection.close()
            raise error_from_response(response.status, payload, response.reason)
        return response

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -- plumbing -----------------------------------------------------------

    def target(self, path: str, query: dict[str, Any] | None = None) -> str:
        full = path if path.startswith(self.prefix + "/") or path == self.prefix \
            else self.prefix + "/" + path.lstrip("/")
        encoded = query_string(query)
        return f"{full}?{encoded}" if encoded else full

    def _send(self, connection: http.client.HTTPSConnection, method: str, path: str,
              query: dict[str, Any] | None, body: Any,
              headers: dict[str, str]) -> http.client.HTTPResponse:
        if self.token:
            headers = {**headers, "Authorization": f"Bearer {self.token}"}
        try:
            if connection.sock is None:
                connection.connect()
                self._check_peer(connection)
            connection.request(method, self.target(path, query), body=body, headers=headers)
            return connection.getresponse()
        except ssl.SSLCertVerificationError as exc:
            self._drop(connection)
            raise CertificateError(f"the engine API at {self.url}: {exc.verify_message}",
                                   url=self.url) from None
        except (OSError, http.client.HTTPException) as exc:
            self._drop(connection)
            raise KestrelError(f"cannot reach the engine API at {self.url}: {exc}",
                               url=self.url) from None

    def _check_peer(self, connection: http.client.HTTPSConnection) -> None:
        sock = connection.sock
        refusal = api_refusal(sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None)
        if refusal is not None:
            connection.close()
            raise CertificateError(f"{self.url}: {refusal}", url=self.url)

    def _new_connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                           context=self._context)

    def _kept_connection(self) -> http.client.HTTPSConnection:
        """The kept connection, unless the server closed it meanwhile: an idle socket
        that is readable has been closed (or sent garbage), so a request sent on it would
        be lost or, worse, half-sent; a new one is opened instead."""
        connection = self._connection
        if connection is not None and connection.sock is not None:
            readable, _, _ = select.select([connection.sock], [], [], 0)
            if readable:
                self.close()
                connection = None
        if connection is None:
            connection = self._connection = self._new_connection()
        return connection

    def _drop(self, connection: http.client.HTTPSConnection) -> None:
        connection.close()
        if connection is self._connection:
            self._connection = None
