"""RemoteEngine: the engine facade's calls made over the engine API.

``engine.<service>.<method>(*args, **kwargs)`` becomes the operation whose
operationId is ``<service>.<method>`` in the API's OpenAPI document (read once per
connection), and answers what the local call answers: an outcome object
(``changed``/``entity``/``diff``), a whole list (every page followed), or the value.
A long operation's job is polled until it ends; its error is raised typed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from engine_lib.client.http import Http
from engine_lib.client.operations import Operation, catalog
from engine_lib.protocol.errors import KestrelError, NotFound, rebuild

# Job polls start fast (most long calls finish within a second) and back off.
POLL_FIRST = 0.05
POLL_MAX = 0.5
PAGE_LIMIT = 1000  # the API's largest page


@dataclass
class RemoteOutcome:
    """What a mutating call returns, as engine_lib.services.results.Outcome."""

    changed: bool
    entity: dict[str, Any] | None
    diff: dict[str, Any] | None = None


class _Service:
    def __init__(self, remote: RemoteEngine, name: str) -> None:
        self._remote = remote
        self._name = name

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        operation = self._remote.operations.get(f"{self._name}.{method}")
        if operation is None:
            raise AttributeError(f"the engine API has no operation {self._name}.{method}")

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._remote.call(operation, args, kwargs)

        call.__name__ = method
        return call


class RemoteEngine:
    """An engine reached over its HTTPS API; a context manager."""

    def __init__(self, http: Http, document: dict[str, Any]) -> None:
        self.http = http
        self.document = document
        self.operations = catalog(document)
        self._services = {op.split(".", 1)[0] for op in self.operations if "." in op}
        self._login: dict[str, Any] | None = None

    @classmethod
    def connect(cls, url: str, *, username: str | None = None, password: str | None = None,
                token: str | None = None, ca_file: str | None = None,
                timeout: float = 60) -> RemoteEngine:
        """Read the API's description, then log in with ``username``/``password``
        (a login token the engine revokes on close) or use ``token``."""
        if token and (username or password):
            raise KestrelError("token and username/password are mutually exclusive; "
                               "give one of them", field="token")
        if bool(username) != bool(password) and not token:
            missing = "password" if username else "username"
            raise KestrelError(f"{missing}: required with "
                               f"{'username' if username else 'password'}", field=missing)
        http = Http(url, ca_file=ca_file, timeout=timeout, token=token or None)
        try:
            _, document = http.json("GET", "/openapi.json")
            remote = cls(http, document)
            if username and password:
                remote.login(username, password)
        except BaseException:
            http.close()
            raise
        return remote

    def login(self, username: str, password: str) -> dict[str, Any]:
        self.http.token = None
        _, login = self.http.json("POST", "/auth/token",
                                  body={"username": username, "password": password})
        self.http.token = login["token"]
        self._login = login
        return login

    def close(self) -> None:
        """Revoke the login token this connection made (a token given is left alone)."""
        login, self._login = self._login, None
        try:
            if login is not None:
                name = login.get("name") or self._token_name(login["id"])
                if name is not None:
                    try:
                        self.http.json("DELETE", f"/tokens/{name}")
                    except NotFound:
                        pass  # already revoked or expired and purged
        finally:
            self.http.token = None
            self.http.close()

    def _token_name(self, token_id: Any) -> str | None:
        _, page = self.http.json("GET", "/tokens", query={"limit": PAGE_LIMIT})
        items = page.get("items", []) if isinstance(page, dict) else page
        for token in items:
            if str(token.get("id")) == str(token_id):
                return str(token["name"])
        return None

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self.__dict__.get("_services", ()):
            raise AttributeError(f"the engine API has no service {name!r}")
        return _Service(self, name)

    # -- calls --------------------------------------------------------------

    def call(self, operation: Operation, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = operation.bind(args, kwargs)
        if operation.stream:
            from engine_lib.client import transfers  # the disk transfer side (images)

            stream = getattr(transfers, operation.stream)
            return stream(self, operation, bound)
        if operation.returns == "page" and not ({"offset", "limit"} & bound.keys()):
            return self._all_pages(operation, bound)
        path, query, body = operation.request(bound)
        status, answer = self.http.json(operation.method, path, query=query, body=body)
        return self.shape(operation, self.result(status, answer))

    def result(self, status: int, answer: Any) -> Any:
        """The operation's result: a job's (202 {"job": ...}) once it ends, else the answer."""
        if status == 202 and isinstance(answer, dict) and isinstance(answer.get("job"), dict):
            return self.wait_job(answer["job"])
        return answer

    def wait_job(self, job: dict[str, Any]) -> Any:
        """Poll a job until it ends; its result, or its error raised typed.

        Interrupted (Ctrl-C, a timeout of the caller), the job is asked to cancel:
        the engine would otherwise carry on with work nobody waits for.
        """
        delay = POLL_FIRST
        try:
            while job.get("status") == "running":
                time.sleep(delay)
                delay = min(delay * 2, POLL_MAX)
                _, job = self.http.json("GET", f"/jobs/{job['id']}")
        except KeyboardInterrupt:
            try:
                self.http.json("DELETE", f"/jobs/{job['id']}")
            except KestrelError:
                pass
            raise
        if job.get("status") == "succeeded":
            return job.get("result")
        error = job.get("error") or {}
        raise rebuild(str(error.get("code", "KestrelError")),
                      str(error.get("message") or f"job {job.get('id')} {job.get('status')}"),
                      error.get("details") if isinstance(error.get("details"), dict) else {})

    def shape(self, operation: Operation, result: Any) -> Any:
        """The local call's return value from the API's answer."""
        if operation.returns == "outcome" and isinstance(result, dict):
            return RemoteOutcome(changed=bool(result.get("changed")),
                                 entity=result.get("entity"), diff=result.get("diff"))
        if operation.returns == "page" and isinstance(result, dict) and "items" in result:
            return list(result["items"])
        if operation.unwrap and isinstance(result, dict):
            return result.get(operation.unwrap)
        return result

    def _all_pages(self, operation: Operation, bound: dict[str, Any]) -> list[Any]:
        items: list[Any] = []
        while True:
            path, query, body = operation.request(
                {**bound, "offset": len(items), "limit": PAGE_LIMIT})
            _, page = self.http.json(operation.method, path, query=query, body=body)
            batch = page.get("items", [])
            items.extend(batch)
            if not batch or len(items) >= int(page.get("total", 0)):
                return items
