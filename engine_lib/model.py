"""The engine's entities: clusters, hosts, VMs and their devices, the audit log.

Devices live in one table, as in oVirt's vm_device: a row per device with its
type, the user's settings (``spec``) and what libvirt reports back
(``address``, ``alias``). The row id is the device UUID that becomes the
``ua-<uuid>`` alias in the domain XML, so it is created once and kept.

Every mutable entity carries a ``version`` column used by SQLAlchemy as a row
version: two writers updating the same row cannot silently overwrite each other.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.protocol.wire import AGENT_PORT


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass




class Cluster(Base):
    __tablename__ = "clusters"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # 'kvm' on real hosts; 'qemu' (TCG) only where KVM is unusable, e.g. nested labs.
    virt_type: Mapped[str] = mapped_column(String(16), default="kvm")
    memory_overcommit_percent: Mapped[int] = mapped_column(Integer, default=100)
    # List of "first-last" MAC ranges.
    mac_pool: Mapped[list] = mapped_column(JSON, default=list)
    # A name from engine_lib.scheduling.policies and
    # the cluster's values for that policy's parameters.
    scheduling_policy: Mapped[str] = mapped_column(String(32), default="none")
    scheduling_properties: Mapped[dict] = mapped_column(JSON, default=dict)
    # The fencing policy's fields (engine_lib.services.fencing_settings.FencingPolicy); {} = defaults.
    fencing_policy: Mapped[dict] = mapped_column(JSON, default=dict)
    # A convergence policy's name (engine_lib.protocol.convergence), and the
    # bandwidth limit of each migration in Mbps (0 = no limit).
    migration_policy: Mapped[str] = mapped_column(String(32), default="minimal_downtime")
    migration_bandwidth_mbps: Mapped[int] = mapped_column(Integer, default=0)
    # Migrate over libvirt TLS (qemu+tls, VIR_MIGRATE_TLS); hosts need
    # the host role's libvirt TLS (on by default). New clusters encrypt; clusters made
    # before that default keep what they had (the column's server default).
    migration_encrypted: Mapped[bool] = mapped_column(Boolean, default=True)
    # The hosts' agents may shrink the balloons of this
    # cluster's VMs under memory pressure (engine_lib.agent.ballooning).
    ballooning: Mapped[bool] = mapped_column(Boolean, default=False)
    # oVirt's HA reservation: the engine keeps checking that the highly available
    # VMs of any one failed host could restart on the others (ha_reservation_checks).
    ha_reservation: Mapped[bool] = mapped_column(Boolean, default=False)
    # The custom properties its VMs may set: name -> the regular expression a value
    # must match in full (engine_lib.services.custom_properties); {} allows none.
    custom_properties: Mapped[dict] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    hosts: Mapped[list[Host]] = relationship(back_populates="cluster")
    vms: Mapped[list[Vm]] = relationship(back_populates="cluster")
    # The cluster's logical networks go with it.
    networks: Mapped[list[LogicalNetwork]] = relationship(
        cascade="all, delete-orphan", order_by="LogicalNetwork.name")

    __mapper_args__ = {"version_id_col": version}


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"))
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=AGENT_PORT)
    status: Mapped[str] = mapped_column(String(32), default=HostStatus.INSTALLING)
    # Capabilities as the agent last reported them.
    hostname: Mapped[str] = mapped_column(String(255), default="")
    host_uuid: Mapped[str] = mapped_column(String(36), default="")
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    libvirt_version: Mapped[str] = mapped_column(String(32), default="")
    # Facts the scheduler's filters read. None means
    # "not reported", which no filter holds against the host.
    cpu_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    machines: Mapped[list | None] = mapped_column(JSON, nullable=True)
    networks: Mapped[list | None] = mapped_column(JSON, nullable=True)
    hooks: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # [{name, path, available, ...}] from the agent's
    # configured storage domains; None until the agent reports them.
    storage_domains: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # Huge page size in KiB (as a string key) -> free pages.
    hugepages: Mapped[dict] = mapped_column(JSON, default=dict)
    used_memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    used_cpu_percent: Mapped[float] = mapped_column(Float, default=0.0)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # {"agent": name, "options": {...}} of a fence-agents style power fence agent
    # ({} = none; the engine finds the agent by its name, services.fencing_settings); the
    # command a soft fence runs over SSH; and where the engine stands in fencing the host
    # ("", "soft", "fenced"; see engine_lib.loop.fencing).
    power_management: Mapped[dict] = mapped_column(JSON, default=dict)
    soft_fence_command: Mapped[str] = mapped_column(Text, default="systemctl restart kestrel-agent")
    fence_state: Mapped[str] = mapped_column(String(16), default="")
    fence_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)
    # Power saving: "" (the engine left its power alone), or how far the engine got in
    # powering it down or up ("off": in maintenance and powered off by the engine), and when.
    power_saving: Mapped[str] = mapped_column(String(16), default="")
    power_saving_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)
    # The agent build the engine last installed (host_deploy):
    # its version and wheel checksum ("" = never reinstalled by the engine), when, and
    # why the last reinstall failed ("" after a success).
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    agent_wheel_sha256: Mapped[str] = mapped_column(String(64), default="")
    agent_installed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                                nullable=True)
    install_error: Mapped[str] = mapped_column(Text, default="")
    # The host's SSH host keys, known_hosts lines ("type base64"), recorded when its agent
    # first answers over mutual TLS or given by the operator; every SSH login checks them
    # (services.host_keys). "" = none recorded: the engine does not log in.
    ssh_host_keys: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    cluster: Mapped[Cluster] = relationship(back_populates="hosts")

    __mapper_args__ = {"version_id_col": version}


class Vm(Base):
    __tablename__ = "vms"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"))
    description: Mapped[str] = mapped_column(Text, default="")
    memory_mib: Mapped[int] = mapped_column(Integer)
    sockets: Mapped[int] = mapped_column(Integer, default=1)
    cores: Mapped[int] = mapped_column(Integer, default=1)
    threads: Mapped[int] = mapped_column(Integer, default=1)
    machine: Mapped[str] = mapped_column(String(16), default="q35")
    kernel: Mapped[str] = mapped_column(Text, default="")
    initrd: Mapped[str] = mapped_column(Text, default="")
    cmdline: Mapped[str] = mapped_column(Text, default="")
    custom_properties: Mapped[dict] = mapped_column(JSON, default=dict)
    # 0 means "none": no memory hotplug, no vCPU hotplug, ...
    max_memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    max_vcpus: Mapped[int] = mapped_column(Integer, default=0)
    # "" lets the engine choose from the cluster's virt_type at render time.
    cpu_mode: Mapped[str] = mapped_column(String(32), default="")
    cpu_model: Mapped[str] = mapped_column(String(64), default="")
    firmware: Mapped[str] = mapped_column(String(8), default="bios")
    secure_boot: Mapped[bool] = mapped_column(Boolean, default=False)
    numa_nodes: Mapped[int] = mapped_column(Integer, default=0)
    hugepages_kib: Mapped[int] = mapped_column(Integer, default=0)
    launch_paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # The NoCloud payload as spec.cloud_init normalizes it; {} for none.
    cloud_init: Mapped[dict] = mapped_column(JSON, default=dict)
    # Canonical forms shared with the scheduler:
    # {"enabled": bool, "priority": int} and {"hosts": [...], "affinity_groups": [...]}.
    high_availability: Mapped[dict] = mapped_column(
        JSON, default=lambda: {"enabled": False, "priority": 0})
    placement: Mapped[dict] = mapped_column(
        JSON, default=lambda: {"hosts": [], "affinity_groups": []})
    # Free-form labels; the inventory plugin groups by them.
    tags: Mapped[list] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(32), default=VmStatus.DOWN)
    exit_reason: Mapped[str] = mapped_column(String(255), default="")
    # The engine owes this HA VM a restart (its host failed);
    # ha_proof says why it is known not to run there (empty until proven).
    ha_restart_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    ha_proof: Mapped[str] = mapped_column(Text, default="")
    # A start or restore call that created its domain ended without the host's answer
    # (timeout, reset): the VM waits on run_on_host, holding its claim, until that host
    # reports it running or not (engine_lib.loop.vm_status). Nothing starts it elsewhere.
    launch_unconfirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    # The agent's devices hash at the last device matching;
    # the engine fetches the live XML again only when the agent reports another.
    devices_hash: Mapped[str] = mapped_column(String(64), default="")
    # qemu-guest-agent's latest report (agent GET /vms/{id}/guest),
    # refreshed on the VM poll; {} until a guest agent answered; _at: when it last changed.
    guest_info: Mapped[dict] = mapped_column(JSON, default=dict)
    guest_info_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    # Where a Suspended VM's memory is saved ({domain, image, volume}); None otherwise.
    memory_volume: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    run_on_host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), nullable=True)
    # The template version the VM was made from (thin or cloned); None for one made blank.
    template_id: Mapped[str | None] = mapped_column(ForeignKey("templates.id"), nullable=True,
                                                    index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    cluster: Mapped[Cluster] = relationship(back_populates="vms")
    run_on_host: Mapped[Host | None] = relationship()
    template: Mapped[Template | None] = relationship()
    devices: Mapped[list[VmDevice]] = relationship(
        back_populates="vm", cascade="all, delete-orphan", order_by="VmDevice.position")
    # Read-only: snapshots are written by services.snapshots (the database cascades).
    snapshots: Mapped[list[Snapshot]] = relationship(
        viewonly=True, order_by="(Snapshot.created_at, Snapshot.id)")

    __mapper_args__ = {"version_id_col": version}

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads

    def devices_of(self, type_: str) -> list[VmDevice]:
        """The VM's own devices of a type, plugged or not; never those libvirt added."""
        # ``is not False``: a device not yet flushed has managed=None until its default applies.
        return [d for d in self.devices if d.type == type_ and d.managed is not False]


class DeviceType:
    DISK = "disk"
    INTERFACE = "interface"
    SERIAL = "serial"
    BALLOON = "memballoon"
    CONTROLLER = "controller"
    CDROM = "cdrom"
    GRAPHICS = "graphics"
    VIDEO = "video"
    CHANNEL = "channel"
    RNG = "rng"
    WATCHDOG = "watchdog"
    TPM = "tpm"


class VmDevice(Base):
    __tablename__ = "vm_devices"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    # The user's name for a disk or NIC; None for devices a VM has once.
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    # Managed devices are ours; unmanaged ones libvirt added on its own.
    managed: Mapped[bool] = mapped_column(Boolean, default=True)
    plugged: Mapped[bool] = mapped_column(Boolean, default=True)
    spec: Mapped[dict] = mapped_column(JSON, default=dict)
    # Reported back from the live domain XML.
    alias: Mapped[str] = mapped_column(String(64), default="")
    address: Mapped[dict] = mapped_column(JSON, default=dict)
    # The name the guest sees (a disk's target, e.g. vda).
    guest_name: Mapped[str] = mapped_column(String(64), default="")
    # A managed NIC's MAC (kept equal to spec["mac"] on every write): the unique index
    # makes the database, not the allocator's care, the guarantee that no two NICs of
    # the engine share one. None for other devices and for NICs libvirt added.
    mac: Mapped[str | None] = mapped_column(String(17), nullable=True, unique=True, index=True)
    # A disk's volume exists on its storage domain: the engine saw the disk in a running
    # domain (or attached a volume that existed). From then on a start that finds the
    # file missing fails instead of creating a blank one.
    volume_created: Mapped[bool] = mapped_column(Boolean, default=False)

    vm: Mapped[Vm] = relationship(back_populates="devices")

    @property
    def user_alias(self) -> str:
        return f"ua-{self.id}"


@event.listens_for(VmDevice, "before_insert")
@event.listens_for(VmDevice, "before_update")
def _index_mac(_mapper, _connection, device: VmDevice) -> None:
    managed_nic = device.type == DeviceType.INTERFACE and device.managed is not False
    mac = (device.spec or {}).get("mac") if managed_nic else None
    if device.mac != mac:
        device.mac = mac


class AffinityGroup(Base):
    """oVirt's affinity group, per cluster.

    Members are the VMs whose ``placement.affinity_groups`` name the group.
    """

    __tablename__ = "affinity_groups"
    __table_args__ = (UniqueConstraint("cluster_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    vm_rule: Mapped[str] = mapped_column(String(16), default="disabled")
    vm_enforcing: Mapped[bool] = mapped_column(Boolean, default=True)
    host_rule: Mapped[str] = mapped_column(String(16), default="disabled")
    host_enforcing: Mapped[bool] = mapped_column(Boolean, default=True)
    hosts: Mapped[list] = mapped_column(JSON, default=list)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    severity: Mapped[str] = mapped_column(String(16), default="info")
    entity_type: Mapped[str] = mapped_column(String(16))
    entity_name: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    # Who did it (engine_lib.services.actor): an API user, "engine" for the engine loop,
    # "local:<login>" for a module or command run on the engine host itself.
    user_name: Mapped[str] = mapped_column(String(64), default="", index=True)
    token_id: Mapped[str] = mapped_column(String(36), default="")


class LogicalNetwork(Base):
    """A cluster's logical network, carried by a host bridge.

    A VM NIC's ``network`` names one of these once its cluster defines any;
    a ``required`` network's bridge must exist on a host for VMs to run there.
    """

    __tablename__ = "networks"
    __table_args__ = (UniqueConstraint("cluster_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    bridge: Mapped[str] = mapped_column(String(15))
    # 0: untagged; 0: the bridge's own MTU.
    vlan: Mapped[int] = mapped_column(Integer, default=0)
    mtu: Mapped[int] = mapped_column(Integer, default=0)
    required: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}


class StorageDomainCluster(Base):
    """Which clusters a storage domain is attached to."""

    __tablename__ = "storage_domain_clusters"

    storage_domain_id: Mapped[str] = mapped_column(
        ForeignKey("storage_domains.id", ondelete="CASCADE"), primary_key=True)
    cluster_id: Mapped[str] = mapped_column(
        ForeignKey("clusters.id", ondelete="CASCADE"), primary_key=True)


class StorageDomain(Base):
    """A file storage domain (a directory, or an NFS export).

    Hosts mount or hold it at the path their agent is configured with
    (agent.conf [storage_domains]); the engine names it and attaches it to clusters.
    """

    __tablename__ = "storage_domains"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # "file" (path) or "nfs" (export "server:/path", mounted at path on hosts).
    type: Mapped[str] = mapped_column(String(8), default="file")
    path: Mapped[str] = mapped_column(Text, default="")
    export: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    clusters: Mapped[list[Cluster]] = relationship(secondary="storage_domain_clusters",
                                                   order_by="Cluster.name")

    __mapper_args__ = {"version_id_col": version}


class Template(Base):
    """A template version: the settings and read-only disk volumes VMs are made from.

    Versions of one template share its ``name`` (oVirt's sub-versions); a VM names a
    template and takes its latest version unless it names one. ``spec`` is the VM
    settings a VM inherits, in spec.vm's normalized form without the VM's name, its
    disks' volume ids or its NICs' MACs; ``spec["disks"]`` holds each template
    disk's settings with the ``volume_id`` of its volume (a row of ``volumes``).
    """

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("name", "version_number"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version_number: Mapped[int] = mapped_column(Integer, default=1)
    version_name: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"), index=True)
    spec: Mapped[dict] = mapped_column(JSON, default=dict)
    sealed: Mapped[bool] = mapped_column(Boolean, default=False)
    # ok; locked while its volumes are written; illegal when that failed half way.
    status: Mapped[str] = mapped_column(String(16), default="ok")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    cluster: Mapped[Cluster] = relationship()
    volumes: Mapped[list[Volume]] = relationship(back_populates="template")

    __mapper_args__ = {"version_id_col": version}


class Volume(Base):
    """One volume file on a storage domain, ``<domain>/<image_id>/<id>``, and its place
    in a chain: ``parent`` is the volume it is an overlay on (a thin VM's disk on its
    template's volume), on the same domain. The engine owns chains; the agent builds
    on storage what these rows describe and never decides one itself.

    A volume belongs to a VM disk (the device's spec names its image and volume ids),
    to a template version (``template_id``), or to nobody: a floating disk or an ISO
    with a ``name`` of its own (oVirt's floating disks, ``content_type``).
    """

    __tablename__ = "volumes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    image_id: Mapped[str] = mapped_column(String(36), index=True)
    # By name, as disks name it: a cluster with no domain attached accepts any name.
    storage_domain: Mapped[str] = mapped_column(String(64), index=True)
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("volumes.id", ondelete="RESTRICT"), nullable=True, index=True)
    format: Mapped[str] = mapped_column(String(8), default="qcow2")
    size_mib: Mapped[int] = mapped_column(Integer, default=0)
    content_type: Mapped[str] = mapped_column(String(8), default="data")
    name: Mapped[str] = mapped_column(String(64), default="", index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    template_id: Mapped[str | None] = mapped_column(
        ForeignKey("templates.id", ondelete="RESTRICT"), nullable=True, index=True)
    # ok; locked while an upload, copy or export writes it; illegal when one failed half way.
    status: Mapped[str] = mapped_column(String(16), default="ok")
    readonly: Mapped[bool] = mapped_column(Boolean, default=False)
    # The hex SHA-256 of the bytes an upload or import brought in; "" otherwise.
    sha256: Mapped[str] = mapped_column(String(64), default="")
    # While locked: the agent job writing it and the host running that job ("" before
    # the job starts); a locked volume whose job the agent no longer knows was lost.
    job_id: Mapped[str] = mapped_column(String(36), default="")
    job_host: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    parent: Mapped[Volume | None] = relationship(remote_side="Volume.id")
    template: Mapped[Template | None] = relationship(back_populates="volumes")

    __mapper_args__ = {"version_id_col": version}

    @property
    def relpath(self) -> str:
        """Where the file is inside its storage domain."""
        return f"{self.image_id}/{self.id}"

    def chain(self) -> list[Volume]:
        """This volume's parents, nearest first (empty for a volume with none)."""
        out, parent = [], self.parent
        while parent is not None:
            out.append(parent)
            parent = parent.parent
        return out


class Lun(Base):
    """A block device an administrator registered for direct use by VMs (oVirt's direct
    LUN disk). A VM disk names it (``lun: <name or wwid>``); nothing else reaches a
    host device: the engine writes a placeholder and the path here in the domain's
    metadata, and the agent checks it is a block device."""

    __tablename__ = "luns"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # The device on every host of the engine, e.g. /dev/disk/by-id/wwn-0x...
    path: Mapped[str] = mapped_column(Text)
    # The LUN's WWID, when known (may be named instead of the name); "" otherwise.
    wwid: Mapped[str] = mapped_column(String(128), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}


class Migration(Base):
    """One live migration attempt of a VM, kept as a record.

    ``progress`` is the source agent's last sample (data processed and remaining,
    iteration, downtime limit); ``downtime_ms`` the final downtime libvirt measured.
    """

    __tablename__ = "migrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    vm_name: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(64))
    # running | succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), default="running")
    policy: Mapped[str] = mapped_column(String(32), default="minimal_downtime")
    bandwidth_mbps: Mapped[int] = mapped_column(Integer, default=0)
    # Over libvirt TLS (the cluster's migration_encrypted at the time).
    encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    downtime_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)


class User(Base):
    """A local user of the engine API. ``password_hash`` is argon2 (engine_lib.aaa.passwords);
    empty means the user logs in with tokens only."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    password_hash: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[str] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"),
                                          primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True, index=True)


class Permission(Base):
    """A role granted to a user or a group on an object, inherited downwards:
    system > cluster > its hosts, VMs and templates (engine_lib.services.access).

    ``object_id`` is the object's row id ('' for the system), so a later object of
    the same name never inherits a grant meant for a removed one.
    """

    __tablename__ = "permissions"
    __table_args__ = (UniqueConstraint("principal_type", "principal_id", "role",
                                       "object_type", "object_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    principal_type: Mapped[str] = mapped_column(String(8))  # user | group
    principal_id: Mapped[str] = mapped_column(String(36), index=True)
    role: Mapped[str] = mapped_column(String(32))
    object_type: Mapped[str] = mapped_column(String(16))  # system | cluster | host | vm | template
    object_id: Mapped[str] = mapped_column(String(36), default="", index=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A bearer token of a user. The token text is ``kst_<id>_<secret>``; only the
    secret's sha256 is kept (the secret is 256 random bits, so a fast hash is enough).
    ``role`` narrows the token to what that role allows (never beyond its user's)."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32), default="")
    expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiJob(Base):
    """A long operation run by the engine API (a start, a migration, an upload...):
    its progress, its result or error, and whether its user asked to cancel it."""

    __tablename__ = "api_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    operation: Mapped[str] = mapped_column(String(64))
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    token_id: Mapped[str] = mapped_column(String(36), default="")
    # running | succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)  # percent
    phase: Mapped[str] = mapped_column(String(64), default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# -- statistics ----------------------------------------------------------------------------
# Kept apart from the entities (as oVirt's vds_statistics and vm_statistics are): they
# change every poll, and a write to a versioned row would race every module editing it.


class HostStatistics(Base):
    """A host's latest figures, from its agent's last statistics poll."""

    __tablename__ = "host_statistics"

    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"),
                                         primary_key=True)
    sampled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # None until the agent has two samples to compare.
    cpu_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    memory_used_mib: Mapped[int] = mapped_column(Integer, default=0)
    memory_free_mib: Mapped[int] = mapped_column(Integer, default=0)
    load_1m: Mapped[float | None] = mapped_column(Float, nullable=True)
    load_5m: Mapped[float | None] = mapped_column(Float, nullable=True)
    load_15m: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Bytes per second since the agent's previous sample, summed over its VMs' NICs
    # and disks (None until two samples).
    net_rx_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    net_tx_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_read_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_write_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    running_vms: Mapped[int] = mapped_column(Integer, default=0)


class VmStatistics(Base):
    """A running VM's latest figures, from its host's last statistics poll."""

    __tablename__ = "vm_statistics"

    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"),
                                       primary_key=True)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"),
                                                nullable=True)
    sampled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # As top shows it: 100 is one host CPU (a VM with two busy vCPUs shows 200).
    cpu_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    # What the guest uses (from the balloon driver's figures; None without them).
    memory_used_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    balloon_current_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    balloon_target_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    net_rx_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    net_tx_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_read_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_write_bps: Mapped[float | None] = mapped_column(Float, nullable=True)


class StatsSample(Base):
    """History: one host's or VM's figures for a minute ("raw"), an hour or a day.

    An hourly or daily row averages the rows below it (``samples`` of them) and
    keeps the highest CPU seen. No foreign key: history outlives a removed VM
    until its retention ends.
    """

    __tablename__ = "stats_samples"
    __table_args__ = (UniqueConstraint("kind", "object_id", "resolution", "at"),
                      Index("ix_stats_samples_resolution_at", "resolution", "at"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(4))  # host | vm
    object_id: Mapped[str] = mapped_column(String(36))
    resolution: Mapped[str] = mapped_column(String(4))  # raw | hour | day
    # The start of its minute, hour or day (UTC).
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    samples: Mapped[int] = mapped_column(Integer, default=1)
    cpu_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    cpu_percent_max: Mapped[float | None] = mapped_column(Float, nullable=True)
    memory_used_mib: Mapped[float | None] = mapped_column(Float, nullable=True)
    memory_free_mib: Mapped[float | None] = mapped_column(Float, nullable=True)
    load_1m: Mapped[float | None] = mapped_column(Float, nullable=True)
    net_rx_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    net_tx_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_read_bps: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_write_bps: Mapped[float | None] = mapped_column(Float, nullable=True)


class HaReservationCheck(Base):
    """The engine's last answer for a cluster with ha_reservation: could the highly
    available VMs of any one failed host restart on the others?"""

    __tablename__ = "ha_reservation_checks"

    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"),
                                            primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # {"hosts": [names of hosts whose HA VMs would not all fit elsewhere],
    #  "message": "..."}
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


# -- snapshots and backups -----------------------------------------------------------------
# The engine owns every chain: a snapshot or a backup names volume rows, never libvirt's
# snapshot or checkpoint metadata (our domains are transient).


class Snapshot(Base):
    """A point a VM's disks can be reverted to, cloned from or made a template of.

    Taking it froze each disk's then-top volume (``disks``: the frozen volume per disk)
    and put a new qcow2 overlay on it; with ``use_memory`` the running VM's memory was
    saved to ``memory_volume`` too, so a revert resumes the guest where it was.
    ``status`` is ``locked`` while an operation (``operation``: create, revert, merge)
    runs on it; the engine loop reconciles a lock whose agent job is gone.
    """

    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # ok | locked | illegal (an operation failed half way and needs a retry)
    status: Mapped[str] = mapped_column(String(16), default="locked")
    # What holds the lock: "" | create | revert | merge
    operation: Mapped[str] = mapped_column(String(16), default="")
    use_memory: Mapped[bool] = mapped_column(Boolean, default=False)
    # {"domain", "image", "volume"} of the saved memory; None without use_memory.
    memory_volume: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Whether the guest agent froze the filesystems (None: the VM was not running).
    quiesced: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Was the VM running when it was taken (a memory snapshot's revert resumes it).
    vm_running: Mapped[bool] = mapped_column(Boolean, default=False)
    # The VM's settings at that moment (vm_records' spec form), for clones and templates.
    vm_config: Mapped[dict] = mapped_column(JSON, default=dict)
    # [{"disk": device name, "image_id", "volume_id": the volume this snapshot froze}]
    disks: Mapped[list] = mapped_column(JSON, default=list)
    # While locked: the agent job (and its host) doing the operation, "" if synchronous.
    job_id: Mapped[str] = mapped_column(String(36), default="")
    job_host: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}


class Checkpoint(Base):
    """A libvirt checkpoint the engine keeps: the persistent dirty bitmap named ``id``
    in each disk's top volume. Redefined into libvirt before a backup when the
    transient domain was started again (or moved) since, so the next backup can
    still be incremental."""

    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[str] = mapped_column(String(36), default="")
    # [{"disk": device name, "target": "vda", "volume_id": top volume when taken}]
    disks: Mapped[list] = mapped_column(JSON, default=list)
    # libvirt's checkpoint XML (without the domain), as given back to REDEFINE.
    xml: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Backup(Base):
    """One restore point of a VM: a qcow2 file per disk on a storage domain, each a
    ``volumes`` row (content_type ``backup``) whose parent is the previous backup's
    file for an incremental, so a restore flattens the chain like any other."""

    __tablename__ = "backups"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # No foreign key: a VM's backups outlive it.
    vm_id: Mapped[str] = mapped_column(String(36), index=True)
    vm_name: Mapped[str] = mapped_column(String(64), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # full | incremental
    mode: Mapped[str] = mapped_column(String(16), default="full")
    # Asked incremental, made full: why ("" otherwise).
    fallback_reason: Mapped[str] = mapped_column(Text, default="")
    checkpoint_id: Mapped[str] = mapped_column(String(36), default="")
    from_checkpoint_id: Mapped[str] = mapped_column(String(36), default="")
    # running | succeeded | failed
    status: Mapped[str] = mapped_column(String(16), default="running")
    storage_domain: Mapped[str] = mapped_column(String(64))
    # [{"disk", "image_id", "volume_id" (the backup file's row), "size_mib",
    #   "bytes": bytes written for it}]
    disks: Mapped[list] = mapped_column(JSON, default=list)
    # The VM's settings when it was backed up (vm_sources.settings_of form plus
    # ``cluster``): a restore to a new VM makes it from these. None before 0022.
    vm_config: Mapped[dict | None] = mapped_column(JSON, nullable=True, default=dict)
    bytes_written: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[str] = mapped_column(String(36), default="")
    job_host: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                         nullable=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}
