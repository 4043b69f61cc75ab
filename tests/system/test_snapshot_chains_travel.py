"""A VM on a snapshot chain travels: live migration, hibernation and an HA restart
after its host is killed, for real on the lab; and a clone of one of its snapshots,
made while it runs, boots with the data the snapshot froze.

The chain is three volumes deep below the running top: a template-like base, the
VM's first volume and the volume the second snapshot froze (base <- t0 <- t1 <- t2).
The snapshots are taken of the stopped VM by the snapshot service (the agent makes
each qcow2 overlay, with a relative backing name, in the disk's image). A marker in
the base and one written into t0 before the snapshots are read by the guest at every
step, so each host resolved the whole chain.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_agent_hibernation import qga, wait_for_guest_agent
from test_ha import FENCE_AGENT, POLICY, EngineLoop, _restore, fence, wait_until
from test_migration import by_name

from engine_lib.model import DeviceType, Snapshot, Volume
from engine_lib.services import backups, snapshots, vm_config
from engine_lib.services.common import get_vm
from kestrel_lab import hostfs
from kestrel_lab import hosts as lab_hosts
from kestrel_lab.fence import boot_script

pytestmark = pytest.mark.lab

VM = "chains"
CLONE = "chains-clone"
BASE_MARKER = b"kestrel chain base marker"
T0_MARKER = b"kestrel chain marker written before the snapshots"
T0_OFFSET = 64 * 1024


def _volume_path(domain_dir: str, image: str, volume: str) -> str:
    return os.path.join(domain_dir, image, volume)


@pytest.fixture
def chains(engine, agents, lab, lab_guest, engine_dir, tmp_path):
    """Cluster "chains" on h1..h3 with power management and the lab's fence agent (as
    test_ha's), a raw base volume with a marker; afterwards every host is on with its
    agent, no domain of the test is left and the volumes' files are gone."""
    state_dir = lab[0].state_dir
    domain_dir = lab_hosts.shared_dir(state_dir, "data")
    for host in lab:  # the agent "unit": started when a fenced host powers on again
        boot = Path(hostfs.source(host.root, lab_hosts.BOOT_SCRIPT))
        boot.write_text(boot_script(sys.executable))
        boot.chmod(0o755)
    engine.clusters.ensure("chains", virt_type="qemu", migration_encrypted=False,
                           fencing_policy=POLICY)
    engine.config.fence_agents_file.write_text(f"{FENCE_AGENT}\n")
    for handle in agents:
        engine.hosts.ensure(handle.name, address=handle.address, cluster="chains",
                            power_management={"agent": Path(FENCE_AGENT).name, "options": {
                                "plug": handle.name, "state_dir": state_dir}},
                            soft_fence_command=f"{lab_hosts.BOOT_SCRIPT} restart")
    image, volume = str(uuid.uuid4()), str(uuid.uuid4())
    path = _volume_path(domain_dir, image, volume)
    os.makedirs(os.path.dirname(path))
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", path, "32M"], check=True)
    with open(path, "r+b") as handle:
        handle.write(BASE_MARKER)
    with engine.store.transaction() as session:
        session.add(Volume(id=volume, image_id=image, storage_domain="data", format="raw",
                           size_mib=32, name="chain-base"))
    env = type("Chains", (), {})()
    env.engine, env.lab, env.state_dir, env.domain_dir = engine, lab, state_dir, domain_dir
    env.agents, env.ids, env.base = {a.name: a for a in agents}, {}, volume
    env.images = [image]
    env.loop = EngineLoop(engine_dir, str(engine.config.db_url), lab[0].ssh_key,
                          tmp_path / "engine.log")
    try:
        yield env
    finally:
        env.loop.stop()
        _restore(env)
        for image_dir in env.images:
            shutil.rmtree(os.path.join(domain_dir, image_dir), ignore_errors=True)


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def _new_thin_vm(env) -> dict:
    """VM "chains" (HA) whose disk t0 overlays the base; t0 is made here with the
    marker written into it, as if the VM had run once."""
    env.engine.vms.ensure({"name": VM, "cluster": "chains", "memory": "128MiB",
                           "machine": "pc", "kernel": "images:vmlinuz",
                           "initrd": "images:initrd.img", "cmdline": "console=ttyS0",
                           "guest_agent": True, "disks": [],
                           "high_availability": {"enabled": True, "priority": 50}})
    with env.engine.store.transaction() as session:
        vm_config.apply(session, get_vm(session, VM), {"disks": [
            {"name": "root", "size_mib": 32, "storage_domain": "data", "format": "qcow2",
             "interface": "virtio", "parent_volume_id": env.base}]})
    disk = env.engine.vms.info(VM)[0]
    env.ids[VM] = disk["id"]
    disk = disk["disks"][0]
    env.images.append(disk["image_id"])
    top = _volume_path(env.domain_dir, disk["image_id"], disk["volume_id"])
    os.makedirs(os.path.dirname(top))
    _qemu_img("create", "-q", "-f", "qcow2", "-b", f"../{env.images[0]}/{env.base}", "-F",
              "raw", top, "32M")
    marker = Path(env.domain_dir) / "marker"
    marker.write_bytes(T0_MARKER)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                    f"write -s {marker} {T0_OFFSET} {len(T0_MARKER)}", top],
                   check=True, capture_output=True)
    marker.unlink()
    with env.engine.store.transaction() as session:
        get_vm(session, VM).devices_of(DeviceType.DISK)[0].volume_created = True
    return disk


def _read(agent, vm_id: str, offset: int, count: int) -> bytes:
    """Bytes of the guest's /dev/vda; the last close of the device drops its page
    cache, so the next read comes from the disk again."""
    handle = qga(agent, vm_id, "guest-file-open", path="/dev/vda", mode="r")
    try:
        if offset:
            qga(agent, vm_id, "guest-file-seek", handle=handle, offset=offset, whence="set")
        return base64.b64decode(qga(agent, vm_id, "guest-file-read", handle=handle,
                                    count=count)["buf-b64"])
    finally:
        qga(agent, vm_id, "guest-file-close", handle=handle)


def _guest_reads_markers(env, name: str) -> str:
    """The VM is Up on one host and its guest reads both markers there; that host."""
    vm = env.engine.vms.info(name)[0]
    assert vm["status"] == "Up"
    agent = env.agents[vm["host"]]
    wait_for_guest_agent(agent, vm["id"])
    assert _read(agent, vm["id"], 0, len(BASE_MARKER)) == BASE_MARKER
    assert _read(agent, vm["id"], T0_OFFSET, len(T0_MARKER)) == T0_MARKER
    return vm["host"]


def test_a_three_deep_chain_migrates_hibernates_restarts_after_its_host_dies_and_clones(
        chains):
    started = time.monotonic()
    engine = chains.engine
    disk = _new_thin_vm(chains)
    first = snapshots.create(engine, VM, description="first")["id"]
    snapshots.create(engine, VM, description="second")
    vm = engine.vms.ensure({"name": VM}, state="running").entity
    host = _guest_reads_markers(chains, VM)
    live = by_name(chains.agents.values(), host).run(
        ["virsh", "-c", "qemu:///system", "dumpxml", vm["id"]], text=True).stdout
    assert live.count("<backingStore type='file'") == 3  # t1, t0, base under the top t2

    # A clone of the first snapshot while the VM runs: t0 flattened onto the base.
    clone = engine.vms.ensure({"name": CLONE, "snapshot_vm": VM, "snapshot_name": "first",
                               "high_availability": {"enabled": False}},
                              state="running").entity
    chains.ids[CLONE] = clone["id"]
    chains.images.append(clone["disks"][0]["image_id"])
    assert "chain" not in clone["disks"][0]
    _guest_reads_markers(chains, CLONE)
    engine.vms.ensure({"name": CLONE}, state="absent")
    assert engine.vms.info(VM)[0]["status"] == "Up"  # the source ran on
    with engine.store.transaction(commit=False) as session:
        assert session.get(Snapshot, first).status == "ok"
    cloned_s = time.monotonic() - started
    full = _backup(chains, "full")
    assert full["mode"] == "full" and not full["fallback_reason"], full

    # Live migration: the next backup is still incremental (the destination's libvirt had
    # no checkpoint; the agent redefined it from the engine's rows, the bitmap travelled
    # in the shared qcow2).
    there = engine.migrations.migrate(VM, host=next(h for h in chains.agents if h != host))
    assert there.entity["status"] == "succeeded"
    host = _guest_reads_markers(chains, VM)
    migrated = _backup(chains)
    assert (migrated["mode"], migrated["from_checkpoint_id"]) == (
        "incremental", full["checkpoint_id"]), migrated["fallback_reason"]

    # Hibernation and resume, and again incremental after.
    assert engine.vms.ensure({"name": VM}, state="suspended").entity["status"] == "Suspended"
    engine.vms.ensure({"name": VM}, state="running")
    victim = _guest_reads_markers(chains, VM)
    resumed = _backup(chains)
    assert (resumed["mode"], resumed["from_checkpoint_id"]) == (
        "incremental", migrated["checkpoint_id"]), resumed["fallback_reason"]
    # Each backup pruned the checkpoints before its own: libvirt keeps the newest only.
    assert chains.agents[victim].client().checkpoints(vm["id"]) == {
        "checkpoints": [resumed["checkpoint_id"]]}

    # Its host dies: the engine loop fences it and restarts the VM on another host.
    chains.loop.start()
    wait_until(lambda: engine.hosts.info(name=victim)[0]["status"] == "Up", 30,
               "the engine loop watching")
    killed = time.monotonic()
    assert fence("off", victim, chains.state_dir) == 0
    wait_until(lambda: (lambda v: v["status"] == "Up" and v["host"] not in (victim, None))(
        engine.vms.info(VM)[0]), 120, f"{VM} Up on another host")
    restart_s = time.monotonic() - killed
    _guest_reads_markers(chains, VM)
    with engine.store.transaction(commit=False) as session:
        top = session.get(Volume, get_vm(session, VM).devices_of(DeviceType.DISK)[0]
                          .spec["volume_id"])
        assert [v.id for v in top.chain()][-1] == chains.base and len(top.chain()) == 3
        assert top.image_id == disk["image_id"]  # the snapshot overlays stay in its image
    # QEMU died with its host: the bitmap it had in memory was never stored, so the
    # incremental falls back to a full one and says why (or, had it been stored, is
    # incremental); either way nothing is missed.
    crashed = _backup(chains)
    assert crashed["mode"] == "incremental" or crashed["fallback_reason"], crashed
    print(f"snapshot chains lab test: {time.monotonic() - started:.1f} s "
          f"(clone {cloned_s:.1f} s, HA restart {restart_s:.1f} s); the backup after the "
          f"host died: {crashed['mode']} {crashed['fallback_reason']!r}")


def _backup(env, mode: str = "incremental") -> dict:
    """A backup of the VM into domain data; its image is removed with the test's."""
    made = backups.backup(env.engine, VM, mode=mode, storage_domain="data")
    assert made["status"] == "succeeded", made
    env.images.extend(d["image_id"] for d in made["disks"])
    return made
