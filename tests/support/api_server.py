"""The engine API served over real TLS on 127.0.0.1 in this process (uvicorn in a thread),
on a fresh engine directory and CA: for tests of the API, the remote client and modules.

    with served_api(tmp_path_factory) as api:
        token = api.token_for("VmOperator", "cluster", "c1")
        ... api.url, api.ca_file ...
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from engine_lib import pki
from engine_lib.api import serve
from engine_lib.engine import Engine


@dataclass
class ServedApi:
    url: str  # https://127.0.0.1:<port>/api/v1
    ca_file: str
    engine_dir: str
    engine: Engine  # a local engine on the same database: every permission
    admin_token: str  # a SuperUser's
    server: object  # the uvicorn.Server
    _users: itertools.count = field(default_factory=itertools.count)

    def user(self, role: str = "", object_type: str = "system", object_name: str = "",
             password: str | None = None) -> tuple[str, str]:
        """A new user (name, password), granted ``role`` on the object if one is given."""
        name = f"u{next(self._users)}-{role.lower() or 'none'}"
        password = password or secrets.token_urlsafe(18)
        self.engine.users.ensure(name, password=password)
        if role:
            self.engine.permissions.ensure(role=role, user=name, object_type=object_type,
                                           object_name=object_name)
        return name, password

    def token_for(self, role: str, object_type: str = "system", object_name: str = "",
                  *, token_role: str = "") -> str:
        """A token of a new user granted ``role`` on the object."""
        name, _ = self.user(role, object_type, object_name)
        return self.engine.tokens.create(name="test", user=name,
                                         role=token_role).entity["token"]


@contextlib.contextmanager
def served_api(tmp_path_factory, *, agent_factory=None, db_url: str | None = None,
               **settings) -> Iterator[ServedApi]:
    """``settings``: serve.Settings fields (max_body, workers_threads...)."""
    engine_dir = tmp_path_factory.mktemp("api-engine")
    pki.init_ca(str(engine_dir / "pki"))
    engine = Engine.open(str(engine_dir), db_url, agent_factory=agent_factory)
    # Listening before uvicorn runs: a client connecting early waits in the backlog.
    sock = serve.listen("127.0.0.1", 0, backlog=64)
    port = sock.getsockname()[1]
    server = serve.server(engine, serve.Settings(bind="127.0.0.1", port=port,
                                                 addresses=("127.0.0.1", "localhost"),
                                                 **settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="api-server")
    thread.start()
    api = ServedApi(url=f"https://127.0.0.1:{port}/api/v1",
                    ca_file=str(engine_dir / "pki" / pki.CA_CERT), engine_dir=str(engine_dir),
                    engine=engine, admin_token="", server=server)
    try:
        api.admin_token = api.token_for("SuperUser")
        yield api
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        server.config.app.state.jobs.shutdown(wait=True)
        sock.close()
        engine.close()
