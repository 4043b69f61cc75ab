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
from datetime import datetime, timezone

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class HostStatus:
    INSTALLING = "Installing"
    UP = "Up"
    CONNECTING = "Connecting"
    NON_RESPONSIVE = "NonResponsive"
    MAINTENANCE = "Maintenance"


class VmStatus:
    DOWN = "Down"
    WAIT_FOR_LAUNCH = "WaitForLaunch"
    POWERING_UP = "PoweringUp"
    UP = "Up"
    PAUSED = "Paused"
    POWERING_DOWN = "PoweringDown"
    UNKNOWN = "Unknown"

    # A VM in one of these holds resources on its host (oVirt's pending and
    # committed resources): the scheduler must count it.
    ACTIVE = frozenset({WAIT_FOR_LAUNCH, POWERING_UP, UP, PAUSED, POWERING_DOWN, UNKNOWN})


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
    # Issue 6 (migration 0003): a name from engine_lib.scheduling.policies and
    # the cluster's values for that policy's parameters.
    scheduling_policy: Mapped[str] = mapped_column(String(32), default="none")
    scheduling_properties: Mapped[dict] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    hosts: Mapped[list["Host"]] = relationship(back_populates="cluster")
    vms: Mapped[list["Vm"]] = relationship(back_populates="cluster")

    __mapper_args__ = {"version_id_col": version}


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"))
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=54321)
    status: Mapped[str] = mapped_column(String(32), default=HostStatus.INSTALLING)
    # Capabilities as the agent last reported them.
    hostname: Mapped[str] = mapped_column(String(255), default="")
    host_uuid: Mapped[str] = mapped_column(String(36), default="")
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    libvirt_version: Mapped[str] = mapped_column(String(32), default="")
    # Issue 6 (migration 0003): facts the scheduler's filters read. None means
    # "not reported", which no filter holds against the host.
    cpu_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    machines: Mapped[list | None] = mapped_column(JSON, nullable=True)
    networks: Mapped[list | None] = mapped_column(JSON, nullable=True)
    hooks: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # Huge page size in KiB (as a string key) -> free pages.
    hugepages: Mapped[dict] = mapped_column(JSON, default=dict)
    used_memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    used_cpu_percent: Mapped[float] = mapped_column(Float, default=0.0)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
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
    # Issue 3 (migration 0002). 0 means "none": no memory hotplug, no vCPU hotplug, ...
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
    # Canonical forms shared with the scheduler (issue 6):
    # {"enabled": bool, "priority": int} and {"hosts": [...], "affinity_groups": [...]}.
    high_availability: Mapped[dict] = mapped_column(
        JSON, default=lambda: {"enabled": False, "priority": 0})
    placement: Mapped[dict] = mapped_column(
        JSON, default=lambda: {"hosts": [], "affinity_groups": []})
    status: Mapped[str] = mapped_column(String(32), default=VmStatus.DOWN)
    exit_reason: Mapped[str] = mapped_column(String(255), default="")
    run_on_host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    cluster: Mapped[Cluster] = relationship(back_populates="vms")
    run_on_host: Mapped[Host | None] = relationship()
    devices: Mapped[list["VmDevice"]] = relationship(
        back_populates="vm", cascade="all, delete-orphan", order_by="VmDevice.position")

    __mapper_args__ = {"version_id_col": version}

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads

    def devices_of(self, type_: str) -> list["VmDevice"]:
        return [d for d in self.devices if d.type == type_]


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

    vm: Mapped[Vm] = relationship(back_populates="devices")

    @property
    def user_alias(self) -> str:
        return f"ua-{self.id}"


class AffinityGroup(Base):
    """Issue 6 (migration 0003): oVirt's affinity group, per cluster.

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
