"""The engine API's client: what modules, the inventory, tests and benches use on a
controller that holds no engine keys. Standard library only (+ protocol.errors).

``RemoteEngine.connect(url, token=... | username=..., password=...)`` gives an object
used like ``engine_lib.engine.Engine``: ``engine.vms.ensure(spec, check_mode=True)``.
"""

from engine_lib.client.http import Http
from engine_lib.client.remote import Operation, RemoteEngine, RemoteOutcome

__all__ = ["Http", "Operation", "RemoteEngine", "RemoteOutcome"]
