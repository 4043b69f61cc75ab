"""What a new VM or a template is made from: another VM's settings and volumes.

Shared by templates (a template version takes a stopped VM's settings and a copy
of its disks) and by VM creation (a VM takes a template's settings, or a stopped
VM's when it is a clone of it). Settings travel in spec.vm's normalized form, the
form ``vm_config.apply`` takes; what belongs to one VM only (its name, disk volume
ids, NIC MACs, cloud-init, placement, tags) never travels.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine_lib.model import DeviceType, Host, Vm, VmDevice, Volume
from engine_lib.protocol.devices import GUEST_AGENT_CHANNEL
from engine_lib.protocol.errors import Conflict, KestrelError
from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.services import volume_jobs, volumes
from engine_lib.services.host_records import HostRef
from engine_lib.services.vm_config import USER_CDROM

# Plain settings a VM passes on (vm_config's scalars minus what is the VM's own).
INHERITED = ("memory_mib", "max_memory_mib", "machine", "kernel", "initrd", "cmdline",
             "custom_properties", "launch_paused", "high_availability")
_SINGLE = {"graphics": DeviceType.GRAPHICS, "video": DeviceType.VIDEO, "rng": DeviceType.RNG,
           "watchdog": DeviceType.WATCHDOG, "tpm": DeviceType.TPM}


def settings_of(vm: Vm) -> dict:
    """The VM's settings a copy of it inherits, in normalized spec form (disks as
    ``device spec + name``, each with the ``volume_id`` of the VM's volume)."""
    out: dict = {key: getattr(vm, key) for key in INHERITED}
    out["custom_properties"] = dict(vm.custom_properties)
    out["cpu"] = {"sockets": vm.sockets, "cores": vm.cores, "threads": vm.threads,
                  "mode": vm.cpu_mode or None, "model": vm.cpu_model, "max_vcpus": vm.max_vcpus}
    out["firmware"] = {"type": vm.firmware, "secure_boot": vm.secure_boot}
    out["numa"], out["hugepages"] = vm.numa_nodes, vm.hugepages_kib

    def single(type_: str, name: str | None = None) -> VmDevice | None:
        return next((d for d in vm.devices_of(type_) if d.name == name), None)

    for key, type_ in _SINGLE.items():
        device = single(type_)
        out[key] = dict(device.spec) if device else None
    cdrom = single(DeviceType.CDROM, USER_CDROM)
    out["cdrom"] = dict(cdrom.spec) if cdrom else None
    out["serial_console"] = single(DeviceType.SERIAL) is not None
    out["guest_agent"] = single(DeviceType.CHANNEL, GUEST_AGENT_CHANNEL) is not None
    balloon = single(DeviceType.BALLOON)
    out["balloon"] = {"enabled": balloon is not None,
                      "guarantee_mib": balloon.spec.get("guarantee_mib", 0) if balloon else 0}
    # The cloud-init payload drive and cloud_init are the VM's own: never inherited.
    out["disks"] = [{**d.spec, "name": d.name} for d in vm.devices_of(DeviceType.DISK)]
    out["nics"] = [{k: v for k, v in d.spec.items() if k not in ("mac", "bridge")}
                   | {"name": d.name} for d in vm.devices_of(DeviceType.INTERFACE)]
    return out


def require_down(vm: Vm, what: str) -> None:
    """A VM's disks are copied only while nothing writes them."""
    if vm.status != VmStatus.DOWN or vm.run_on_host_id is not None:
        raise Conflict(f"VM '{vm.name}' is {vm.status}: {what} needs it stopped (Down); "
                       "nothing was changed", vm=vm.name, status=vm.status)


def disk_source(session: Session, vm: Vm, disk: dict, field: str) -> dict:
    """Where a VM disk's data is: ``{source, chain, size_mib}`` for a volume copy."""
    if "lun" in disk:
        raise Conflict(f"disk '{disk['name']}' of VM '{vm.name}' is LUN '{disk['lun']}': "
                       f"only volumes on storage domains are copied ({field})")
    device = next(d for d in vm.devices_of(DeviceType.DISK) if d.name == disk["name"])
    if not device.volume_created:
        raise Conflict(f"disk '{disk['name']}' of VM '{vm.name}' has no data yet (its volume is "
                       f"made at the VM's first start); start the VM once first ({field})")
    row = session.get(Volume, disk["volume_id"])
    if row is not None:
        chain = [{"image": p.image_id, "volume": p.id, "format": p.format} for p in row.chain()]
    else:  # no row yet: the chain the disk's spec renders
        chain = [{"image": m["image_id"], "volume": m["volume_id"], "format": m["format"]}
                 for m in disk.get("chain", [])]
    return {"source": {"domain": disk["storage_domain"], "image": disk["image_id"],
                       "volume": disk["volume_id"], "format": disk["format"]},
            "chain": chain, "size_mib": disk["size_mib"]}


def volume_source(volume: Volume) -> dict:
    """A template volume as a copy's source (with its own parents, if any)."""
    return {"source": {"domain": volume.storage_domain, "image": volume.image_id,
                       "volume": volume.id, "format": volume.format},
            "chain": [{"image": p.image_id, "volume": p.id, "format": p.format}
                      for p in volume.chain()],
            "size_mib": volume.size_mib}


def helper_host(session: Session, cluster_id: str, what: str) -> HostRef:
    """An Up host of the cluster to do volume work (the first by name)."""
    host = HostRef.of(session.scalars(select(Host).where(
        Host.cluster_id == cluster_id, Host.status == HostStatus.UP)
        .order_by(Host.name)).first())
    if host is None:
        raise Conflict(f"{what}: no host of the cluster is Up; nothing was changed")
    return host


def copy(engine, host: HostRef, source: dict, target: dict,
         progress: Callable[[dict], None] | None = None, timeout: float | None = None,
         on_job: Callable[[str], None] | None = None) -> dict:
    """One flattened copy by ``host``'s agent (``copy_volume``), waited for; the job is
    recorded on the target's row (and given to ``on_job``), so a copy lost in a crash
    is cleaned up."""
    agent = engine.agent(host.address, host.port)
    job = agent.copy_volume(source["source"], source["chain"], target)["job"]
    volumes.record_job(engine, target["volume"], job, host.name)
    if on_job is not None:
        on_job(job)
    return volume_jobs.wait(agent, job, progress=progress, timeout=timeout)


def delete_quietly(agent, volumes: list[dict]) -> str:
    """Delete volumes a failed operation made; '' when done, else why not."""
    if not volumes:
        return ""
    try:
        agent.delete_volumes(volumes)
    except KestrelError as err:
        return err.message
    return ""


def volume_dict(volume: Volume) -> dict:
    return {"domain": volume.storage_domain, "image": volume.image_id, "volume": volume.id,
            "format": volume.format, "size_mib": volume.size_mib}

