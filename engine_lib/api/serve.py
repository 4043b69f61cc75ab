"""``kestrel engine serve``: the API over HTTPS with uvicorn, its certificate from the
engine CA (the api profile, re-issued when the addresses change)."""

from __future__ import annotations

import gc
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from engine_lib import pki
from engine_lib.api.app import create_app
from engine_lib.api.jobs import DEFAULT_WORKERS
from engine_lib.api.limits import DEFAULT_MAX_BODY
from engine_lib.protocol.errors import InvalidSpec

__all__ = ["DEFAULT_PORT", "Settings", "certificate", "listen", "server", "settle_gc"]

log = logging.getLogger("kestrel.api.serve")

DEFAULT_PORT = 8443
# Young collections every 50,000 net allocations instead of 700: a page of 100 VMs
# allocates tens of thousands of short-lived objects, freed by reference counting anyway.
GC_THRESHOLD = (50_000, 20, 20)


@dataclass(frozen=True)
class Settings:
    bind: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    # Names and IP addresses clients reach the API at: the certificate's SANs.
    addresses: tuple[str, ...] = field(default_factory=tuple)
    workers_threads: int = DEFAULT_WORKERS
    max_body: int = DEFAULT_MAX_BODY

    def check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidSpec("port", f"{self.port} is not a TCP port")
        if self.workers_threads < 1:
            raise InvalidSpec("workers_threads", "must be at least 1")
        if self.max_body < 1024:
            raise InvalidSpec("max_body", "must be at least 1024 bytes")


def certificate(pki_dir: Path, addresses: tuple[str, ...]) -> tuple[Path, Path]:
    """(cert, key) for the API: issued for ``addresses``, or kept when none are given and
    one exists (the host's FQDN when there is none yet)."""
    if addresses or not (pki_dir / pki.API_CERT).exists():
        wanted = list(addresses) or [socket.getfqdn()]
        if pki.ensure_api_certificate(str(pki_dir), wanted):
            log.info("issued the API certificate for %s", ", ".join(wanted))
    return pki_dir / pki.API_CERT, pki_dir / pki.API_KEY


def listen(bind: str, port: int, backlog: int = 2048) -> socket.socket:
    """The API's listening socket, made with IPPROTO_TCP named: asyncio sets TCP_NODELAY on
    accepted connections only when their proto says TCP (socket.create_server leaves it 0),
    and without it a response written as headers then body waits out the client's delayed
    ACK, 40 ms per request."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def server(engine, settings: Settings) -> uvicorn.Server:
    """A uvicorn server of the API on ``engine``; its jobs left running by an earlier
    process are marked failed first."""
    settings.check()
    cert, key = certificate(engine.config.pki_dir, settings.addresses)
    app = create_app(engine, max_body=settings.max_body, workers=settings.workers_threads)
    recovered = app.state.jobs.recover()
    if recovered:
        log.warning("%d job(s) of an earlier engine API process marked failed", recovered)
    config = uvicorn.Config(app, host=settings.bind, port=settings.port,
                            ssl_certfile=str(cert), ssl_keyfile=str(key),
                            proxy_headers=False, server_header=False, access_log=False,
                            log_config=None,
                            # The request line and headers together: a query of the longest
                            # options the routes allow fits (h11's own default is 16 KiB).
                            h11_max_incomplete_event_size=64 * 1024)
    return uvicorn.Server(config)


def settle_gc() -> None:
    """Once started: move every object alive now (modules, the app, its routes, the
    models' metadata) out of the cyclic collector's reach, and collect less often.
    Otherwise a full collection walks all of them during some request (tens of ms: the
    list pages' p95). Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
