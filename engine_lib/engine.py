"""The engine facade: what modules and the CLI call.

``Engine.open()`` finds the engine directory and database, brings the schema
up to date and exposes one service per entity. Every mutating call takes
``check_mode`` and returns an ``Outcome`` (engine_lib.services.results): whether anything changed, the
resulting entity, and a before/after diff.
"""

from __future__ import annotations

from collections.abc import Callable

from engine_lib.broker import AgentApi, AgentClient
from engine_lib.config import EngineConfig
from engine_lib.services.access import AccessService
from engine_lib.services.affinity import AffinityService
from engine_lib.services.authn import Authenticator
from engine_lib.services.backups import BackupService
from engine_lib.services.clusters import ClusterService
from engine_lib.services.events import EventService
from engine_lib.services.groups import GroupService
from engine_lib.services.hosts import HostService
from engine_lib.services.images import ImageService
from engine_lib.services.luns import LunService
from engine_lib.services.migrations import MigrationService
from engine_lib.services.networks import NetworkService
from engine_lib.services.permissions import PermissionService
from engine_lib.services.power_saving import PowerSavingService
from engine_lib.services.snapshot_merge import SnapshotMerges
from engine_lib.services.snapshots import SnapshotService
from engine_lib.services.stats import StatsService
from engine_lib.services.storage_domains import StorageDomainService
from engine_lib.services.templates import TemplateService
from engine_lib.services.tokens import TokenService
from engine_lib.services.users import UserService
from engine_lib.services.vm_devices import VmDeviceService
from engine_lib.services.vms import VmService
from engine_lib.store import Store

__all__ = ["AgentFactory", "Engine"]

# (address, port) -> a client of that host's agent.
AgentFactory = Callable[[str, int], AgentApi]


def _default_agent_factory(config: EngineConfig) -> AgentFactory:
    def connect(address: str, port: int) -> AgentApi:
        return AgentClient(address, port, str(config.pki_dir))

    return connect


class Engine:
    def __init__(self, config: EngineConfig, store: Store,
                 agent_factory: AgentFactory | None = None):
        self.config = config
        self.store = store
        # Replaceable so unit tests of the engine's own logic need no agent: their
        # stand-ins implement AgentApi as AgentClient does.
        self.agent: AgentFactory = agent_factory or _default_agent_factory(config)
        self.clusters = ClusterService(self)
        self.hosts = HostService(self)
        self.vms = VmService(self)
        self.migrations = MigrationService(self)
        self.power_saving = PowerSavingService(self)
        self.events = EventService(self)
        self.affinity_groups = AffinityService(self)
        self.networks = NetworkService(self)
        self.storage_domains = StorageDomainService(self)
        self.luns = LunService(self)
        self.vm_devices = VmDeviceService(self)
        self.templates = TemplateService(self)
        self.images = ImageService(self)
        self.snapshots = SnapshotService(self)
        self.backups = BackupService(self)
        self.access = AccessService(self)
        self.authn = Authenticator(self)
        self.users = UserService(self)
        self.groups = GroupService(self)
        self.permissions = PermissionService(self)
        self.tokens = TokenService(self)
        self.stats = StatsService(self)
        self.snapshot_merge = SnapshotMerges(self)

    @classmethod
    def open(cls, engine_dir: str | None = None, db_url: str | None = None,
             agent_factory: AgentFactory | None = None) -> Engine:
        config = EngineConfig.resolve(engine_dir, db_url)
        if config.engine_dir.exists():
            config.make_private()  # one made by an older release, or by hand
        store = Store(config.db_url)
        store.upgrade()
        return cls(config, store, agent_factory)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
