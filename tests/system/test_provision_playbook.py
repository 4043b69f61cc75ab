"""playbooks/provision.yml for real: the tiny guest's bootable disk image, uploaded from the
controller, becomes a template; two thin VMs made from it boot from their own overlays on two
lab hosts with their cloud-init; a second run changes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from engine_fixtures import REPO, _collections_path
from test_engine_on_lab import wait_for_console

from kestrel_lab import guest_disk
from kestrel_lab import hosts as lab_hosts

pytestmark = pytest.mark.lab

TEMPLATE = "fleet-image"
FLEET = ("fleet1", "fleet2")
# On the lab network (10.77.0.0/24), far above the hosts' own addresses.
ADDRESSES = ["10.77.0.241/24", "10.77.0.242/24"]


@pytest.fixture
def image(lab_state_dir) -> str:
    """The tiny guest as a bootable qcow2 (cached; prints "kestrel-guest: up" from its disk)."""
    return guest_disk.tiny_disk_image(lab_state_dir)


@pytest.fixture
def cluster(engine, agents, lab):
    """Cluster lab with every lab host, the shared data domain and the management network."""
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    engine.storage_domains.ensure(
        "data", path=lab_hosts.shared_dir(lab[0].state_dir, "data"), clusters=["lab"])
    engine.networks.ensure("kestrelmgmt", cluster="lab")
    yield "lab"
    for name in FLEET:
        engine.vms.ensure({"name": name}, state="absent")
    engine.templates.ensure(TEMPLATE, state="absent")


@pytest.fixture
def ssh_key(tmp_path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")],
                   check=True)
    return (tmp_path / "key.pub").read_text().strip()


def provision(engine, image: str, ssh_key: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": _collections_path(),
           "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}
    extra = {"kestrel_cluster": "lab", "kestrel_storage_domain": "data",
             "kestrel_provision_image_path": image, "kestrel_provision_template": TEMPLATE,
             "kestrel_provision_prefix": "fleet", "kestrel_provision_count": len(FLEET),
             "kestrel_provision_memory": "128MiB", "kestrel_provision_ssh_key": ssh_key,
             "kestrel_provision_addresses": ADDRESSES,
             "kestrel_provision_gateway": "10.77.0.254",
             "kestrel_engine_dir": str(engine.config.engine_dir),
             "kestrel_db_url": engine.store.url}
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"),
         str(REPO / "playbooks" / "provision.yml"), "-e", json.dumps(extra)],
        env=env, capture_output=True, text=True, timeout=900, check=False)


def recap(run: subprocess.CompletedProcess) -> dict[str, int]:
    line = re.search(r"^localhost\s*:(.*)$", run.stdout, re.MULTILINE)
    assert line, run.stdout + run.stderr
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line.group(1))}


def test_a_disk_image_becomes_a_fleet_of_thin_vms_and_a_second_run_changes_nothing(
        engine, agents, lab, cluster, image, ssh_key):
    run = provision(engine, image, ssh_key)
    assert run.returncode == 0, run.stdout + run.stderr

    (template,) = engine.templates.info(name=TEMPLATE)
    assert template["status"] == "ok" and template["version"]["number"] == 1
    (template_disk,) = template["disks"]
    # The floating disk the image went to is now the template's own volume.
    assert TEMPLATE not in {disk["name"] for disk in engine.images.list()}

    vms = {name: engine.vms.info(name)[0] for name in FLEET}
    assert {vm["status"] for vm in vms.values()} == {"Up"}
    # Spread: the negative (soft) affinity group puts them on two hosts.
    assert len({vm["host"] for vm in vms.values()}) == len(FLEET)
    data = Path(lab_hosts.shared_dir(lab[0].state_dir, "data"))
    for index, (name, vm) in enumerate(vms.items()):
        # Each boots the image from its own thin overlay: no kernel passed by the engine.
        assert vm["kernel"] == ""
        wait_for_console(engine, name, guest_disk.READY_LINE)
        (disk,) = vm["disks"]
        volume = data / disk["image_id"] / disk["volume_id"]
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(volume)],
            capture_output=True, text=True, check=True).stdout)
        assert info["format"] == "qcow2"
        backing = info["backing-filename"]
        assert backing.startswith("../") and backing.endswith("/" + template_disk["volume_id"])
        assert (volume.parent / backing).resolve().is_file()
        # Its cloud-init reached its host: the cidata ISO holds the hostname, the user's key,
        # and the static address matched to the NIC's MAC.
        agent = next(a for a in agents if a.name == vm["host"])
        seed = agent.run(["cat", f"/var/lib/kestrel/payload/{vm['id']}.iso"],
                         capture_output=True, check=True).stdout
        mac = next(nic["mac"] for nic in vm["nics"])
        for text in (f'"local-hostname": "{name}"', ssh_key.split()[1], ADDRESSES[index], mac):
            assert text.encode() in seed, text

    again = provision(engine, image, ssh_key)
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap(again)["changed"] == 0, again.stdout
    assert {name: engine.vms.info(name)[0]["id"] for name in FLEET} == \
        {name: vm["id"] for name, vm in vms.items()}
