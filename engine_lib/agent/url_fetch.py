"""Download an image from an http(s) URL the engine names, without reaching the host's own
services.

The agent runs as root inside the hosts' network, so a URL is a way to make it
fetch from places the requester cannot reach: loopback, link-local (cloud
metadata at 169.254.169.254), multicast, unspecified. The name is resolved
here, every address checked, and the connection made to the checked address
(TLS still verifies the name): a DNS answer that changes between check and
connect cannot slip through. Redirects are followed by hand (at most
MAX_REDIRECTS), each target checked the same way. ``allow_private`` (agent.conf
``[images] allow_private_urls``, for tests and the lab) lifts the address rule.
Errors are InvalidSpec('url', why).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from engine_lib.protocol.errors import InvalidSpec

MAX_REDIRECTS = 5
PIECE = 1024 * 1024


def check_url(url: str) -> None:
    """http or https with a host: the shape only (addresses are checked on connect)."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidSpec("url", f"{url!r} is not an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise InvalidSpec("url", f"{url!r}: {exc}") from None


def _refused(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for test, what in ((ip.is_loopback, "loopback"), (ip.is_link_local, "link-local"),
                       (ip.is_multicast, "multicast"), (ip.is_unspecified, "unspecified")):
        if test:
            return what
    return None


def _connect(host: str, port: int, timeout: float, allow_private: bool) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidSpec("url", f"cannot resolve {host}: {exc.strerror}") from None
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        if not allow_private:
            why = _refused(address[0])
            if why:
                raise InvalidSpec("url", f"{host} resolves to {address[0]}, a {why} "
                                         "address; the agent does not download from there")
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    reason = "timed out" if isinstance(last, TimeoutError) else \
        getattr(last, "strerror", None) or str(last)
    raise InvalidSpec("url", f"cannot connect to {host}:{port}: {reason}")


class _Connection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, timeout: float, allow_private: bool,
                 tls: ssl.SSLContext | None):
        super().__init__(host, port, timeout=timeout)
        self._allow_private, self._tls = allow_private, tls

    def connect(self) -> None:
        sock = _connect(self.host, self.port, self.timeout, self._allow_private)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock


def fetch(url: str, write: Callable[[bytes, int | None], None], timeout: float,
          allow_private: bool = False, tls: ssl.SSLContext | None = None) -> int:
    """GET ``url`` (redirects followed), calling ``write(piece, total)`` for each piece of
    the body; the byte count. ``timeout`` bounds connecting and each read."""
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url)
        parts = urlsplit(url)
        https = parts.scheme == "https"
        conn = _Connection(parts.hostname or "", parts.port or (443 if https else 80),
                           timeout, allow_private,
                           (tls or ssl.create_default_context()) if https else None)
        try:
            try:
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                conn.request("GET", path, headers={"User-Agent": "kestrel-agent",
                                                   "Accept-Encoding": "identity"})
                response = conn.getresponse()
            except TimeoutError:
                raise InvalidSpec("url", f"{url} did not answer within {timeout:g} s") \
                    from None
            except (OSError, http.client.HTTPException) as exc:
                raise InvalidSpec("url", f"{url}: {exc}") from None
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise InvalidSpec("url", f"{url} redirects ({response.status}) "
                                             "without a Location")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise InvalidSpec("url", f"{url} answered {response.status} "
                                         f"{response.reason}")
            return _body(url, response, write, timeout)
        finally:
            conn.close()
    raise InvalidSpec("url", f"more than {MAX_REDIRECTS} redirects")


def _body(url: str, response: http.client.HTTPResponse,
          write: Callable[[bytes, int | None], None], timeout: float) -> int:
    total = response.length  # None when the server does not say
    received = 0
    while True:
        try:
            piece = response.read(PIECE)
        except TimeoutError:
            raise InvalidSpec("url", f"{url} stopped sending for {timeout:g} s after "
                                     f"{received} bytes") from None
        except (OSError, http.client.HTTPException) as exc:
            raise InvalidSpec("url", f"{url}: the download broke after {received} bytes "
                                     f"({exc})") from None
        if not piece:
            break
        received += len(piece)
        write(piece, total)
    if total is not None and response.length:
        raise InvalidSpec("url", f"{url}: the download ended after {received} bytes")
    return received
