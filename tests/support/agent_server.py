"""A real agent server (mutual TLS, the agent's own API) on 127.0.0.1 in this process,
with a throwaway engine CA: for tests of the wire between the engine and an agent."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from engine_lib import pki
from engine_lib.agent.api import Api
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.server import AgentServer, server_context


@contextlib.contextmanager
def serving(tmp_path_factory, **config) -> Iterator[tuple[Api, int, str]]:
    """(api, port, engine pki dir) while the server runs; ``config``: AgentConfig fields."""
    pki_dir = tmp_path_factory.mktemp("engine") / "pki"
    pki.init_ca(str(pki_dir))
    where = tmp_path_factory.mktemp("agent")
    key, cert = pki.issue(str(pki_dir), "agent", ["127.0.0.1"])
    (where / "agent.key").write_bytes(key)
    (where / "agent.pem").write_bytes(cert)
    settings = AgentConfig(name="agent", address="127.0.0.1", port=0,
                           libvirt_uri="test:///default", ca=str(pki_dir / "ca.pem"),
                           cert=str(where / "agent.pem"), key=str(where / "agent.key"),
                           source="test", **config)
    api = Api(settings)
    server = AgentServer(settings, server_context(settings), api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield api, server.server_address[1], str(pki_dir)
    finally:
        server.shutdown()
        server.server_close()
