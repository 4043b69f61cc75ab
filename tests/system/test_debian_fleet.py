"""A real Debian 12 fleet through the engine, end to end, on the lab.

The Debian image built from Debian packages (kestrel_lab.debian_image, cached in
the lab's state directory) is uploaded as a floating disk on the shared domain
'data', becomes a template, and two thin VMs start from it on two different
hosts, each with cloud-init (hostname, a user with an SSH key, a static address
on the lab network). Each boots from its own overlay with no kernel passed by
the engine; the guest agent reports its hostname and address through the
engine; an SSH login from its host runs a command. Build the image before taking
the lab lock (``make images``): a cold build takes minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import kestrel_lab
from engine_lib.loop.monitoring import Monitor
from engine_lib.protocol.errors import GuestAgentUnavailable, KestrelError
from kestrel_lab import debian_image
from kestrel_lab import hosts as lab_hosts

pytestmark = pytest.mark.lab

USER = "kestrel"
# On the lab network (10.77.0.0/24), far above the hosts' own addresses.
GUESTS = {"deb-fleet-1": ("h1", "10.77.0.233"), "deb-fleet-2": ("h2", "10.77.0.234")}
BOOT_TIMEOUT = 600  # bounds a failure only: Debian under TCG on a loaded machine takes minutes
SSH_TIMEOUT = 180


@pytest.fixture(scope="module")
def image(lab_state_dir: str) -> str:
    started = time.monotonic()
    path = debian_image.debian_image(lab_state_dir)
    print(f"\ndebian image ready (cached or built) in {time.monotonic() - started:.1f}s")
    return path


@pytest.fixture
def cluster(engine, agents, lab):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    engine.storage_domains.ensure("data", path=lab_hosts.shared_dir(lab[0].state_dir, "data"),
                                  clusters=["lab"])
    return "lab"


@pytest.fixture
def key(lab_state_dir: str) -> Iterator[str]:
    """A key pair the lab hosts' ssh can read (it runs in their namespaces, as root)."""
    workdir = tempfile.mkdtemp(dir=lab_state_dir, prefix="test-debian-fleet-")
    path = os.path.join(workdir, "id_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    yield path
    shutil.rmtree(workdir, ignore_errors=True)


def domain_entries(lab) -> set[str]:
    root = Path(lab_hosts.shared_dir(lab[0].state_dir, "data"))
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.fixture
def fleet(engine, cluster, lab) -> Iterator[dict[str, str]]:
    """Names of what the test makes; all removed afterwards, even after a failure."""
    made = {"disk": f"debian-12-{uuid.uuid4().hex[:8]}", "template": "debian-fleet"}
    before = domain_entries(lab)
    yield made
    errors = []
    for name in GUESTS:
        try:
            engine.vms.ensure({"name": name}, state="absent", force=True)
        except KestrelError as err:
            errors.append(f"{name}: {err}")
    try:
        engine.templates.ensure(made["template"], state="absent")
        if any(d["name"] == made["disk"] for d in engine.images.list()):
            engine.images.remove(made["disk"])  # the template never took it
    except KestrelError as err:
        errors.append(str(err))
    assert not errors, errors
    # Nothing left on the shared domain: no volume, no image directory.
    assert domain_entries(lab) == before


def wait_until(what: str, probe: Callable[[], object], timeout: float,
               diagnostics: Callable[[], str]) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout}s:\n{diagnostics()[-3000:]}")
        time.sleep(1)


def cloud_init(name: str, address: str, public_key: str) -> dict:
    return {
        "hostname": name,
        "ssh_keys": [public_key],  # meta-data: the image's default user
        "user_data": "#cloud-config\n" + json.dumps({
            "users": ["default", {"name": USER, "shell": "/bin/bash",
                                  "ssh_authorized_keys": [public_key]}]}) + "\n",
        "network_config": {"version": 2, "ethernets": {debian_image.NIC: {
            "addresses": [f"{address}/24"], "gateway4": "10.77.0.254"}}},
    }


def qemu_img_info(path: Path) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)],
                                     capture_output=True, text=True, check=True).stdout)


def test_two_thin_debian_vms_on_two_hosts_take_cloud_init(engine, agents, lab, image, key,
                                                         fleet):
    clients = {agent.name: agent.client() for agent in agents}
    lab_by_name = {host.name: host for host in lab}
    domain = Path(lab_hosts.shared_dir(lab[0].state_dir, "data"))
    with open(f"{key}.pub") as public:
        public_key = public.read().strip()

    started = time.monotonic()
    disk = engine.images.upload(fleet["disk"], storage_domain="data", upload_image_path=image,
                                image_format="qcow2").entity
    uploaded = time.monotonic()
    assert disk["status"] == "ok" and disk["format"] == "qcow2"
    template = engine.templates.ensure(
        fleet["template"], disk=fleet["disk"], cluster="lab",
        settings={"memory": f"{debian_image.MEMORY_MIB}MiB", "machine": "q35",
                  "guest_agent": True, "nics": [{"name": "nic1", "network": "kestrelmgmt"}]},
    ).entity
    templated = time.monotonic()
    base = template["disks"][0]
    assert template["status"] == "ok" and base["volume_id"] == disk["volume_id"]

    # Both start before either is waited on: the two boots run side by side.
    vms = {}
    for name, (host, address) in GUESTS.items():
        vms[name] = engine.vms.ensure({
            "name": name, "template": fleet["template"], "placement": {"hosts": [host]},
            "cloud_init": cloud_init(name, address, public_key)}, state="running").entity
        assert vms[name]["host"] == host and vms[name]["status"] == "Up"
    booted = time.monotonic()

    for vm in vms.values():
        client = clients[vm["host"]]
        live = client.vm_xml(vm["id"])
        assert "<kernel>" not in live and "<initrd>" not in live
        thin = vm["disks"][0]
        overlay = domain / thin["image_id"] / thin["volume_id"]
        assert f"<source file='{overlay}'" in live, live
        assert thin["volume_id"] != base["volume_id"]
        # Its own qcow2 overlay on the template volume, the backing written relative.
        assert qemu_img_info(overlay)["backing-filename"] == \
            f"../{base['image_id']}/{base['volume_id']}"

    agent_ready = {}
    for name, vm in vms.items():
        client, address = clients[vm["host"]], GUESTS[name][1]

        def reported(client=client, vm=vm, name=name, address=address) -> bool:
            try:
                report = client.guest_info(vm["id"])
            except GuestAgentUnavailable:
                return False
            return report["hostname"] == name and address in report["ips"]

        wait_until(f"{name}'s guest agent reporting its hostname and {address}", reported,
                   BOOT_TIMEOUT, lambda client=client, vm=vm: client.console_log(vm["id"], 8192))
        agent_ready[name] = time.monotonic() - booted

    # The engine's VM poll stores the guest's report, as vm_info shows it.
    Monitor(engine).cycle()
    for name in GUESTS:
        guest = engine.vms.info(name)[0]["guest"]
        assert guest["hostname"] == name and guest["ips"] == [GUESTS[name][1]], guest

    ssh_ready = {}
    for name, vm in vms.items():
        host, address = lab_by_name[vm["host"]], GUESTS[name][1]

        def login(host=host, address=address) -> subprocess.CompletedProcess | None:
            result = kestrel_lab.run_in(host.name, [
                "ssh", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
                "-o", "LogLevel=ERROR", f"{USER}@{address}", "cat /etc/hostname; id -un"],
                host.state_dir, capture_output=True, text=True, timeout=60)
            return result if result.returncode == 0 else None

        result = wait_until(f"an SSH login to {name} from {host.name}", login, SSH_TIMEOUT,
                            lambda vm=vm: clients[vm["host"]].console_log(vm["id"], 8192))
        ssh_ready[name] = time.monotonic() - booted
        assert result.stdout.split() == [name, USER]

    print(f"\nupload {uploaded - started:.1f}s, template {templated - uploaded:.1f}s, "
          f"both VMs started {booted - templated:.1f}s; from start: guest agent "
          + ", ".join(f"{n} {t:.0f}s" for n, t in agent_ready.items()) + "; SSH "
          + ", ".join(f"{n} {t:.0f}s" for n, t in ssh_ready.items()))
