"""playbooks/provision.yml for real: the tiny guest's bootable disk image, uploaded from the
controller, becomes a template; two thin VMs made from it boot from their own overlays on two
lab hosts with their cloud-init; a second run changes nothing. And the image_template role alone,
from a URL a lab host downloads: made once, a second version only when asked for."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from engine_fixtures import REPO, _collections_path
from test_engine_on_lab import wait_for_console

from kestrel_lab import guest_disk, network
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


def ansible_playbook(playbook: Path, extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": _collections_path(),
           "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook),
         "-e", json.dumps(extra)],
        env=env, capture_output=True, text=True, timeout=900, check=False)


def provision(engine, image: str, ssh_key: str) -> subprocess.CompletedProcess:
    return ansible_playbook(REPO / "playbooks" / "provision.yml", {
        "kestrel_cluster": "lab", "kestrel_storage_domain": "data",
        "kestrel_provision_image_path": image, "kestrel_provision_template": TEMPLATE,
        "kestrel_provision_prefix": "fleet", "kestrel_provision_count": len(FLEET),
        "kestrel_provision_memory": "128MiB", "kestrel_provision_ssh_key": ssh_key,
        "kestrel_provision_addresses": ADDRESSES, "kestrel_provision_gateway": network.GATEWAY,
        "kestrel_engine_dir": str(engine.config.engine_dir), "kestrel_db_url": engine.store.url})


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


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def image_url(image):
    """The image served over HTTP on the lab network, where the lab hosts fetch it."""
    handler = functools.partial(_QuietHandler, directory=os.path.dirname(image))
    server = ThreadingHTTPServer((network.GATEWAY, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{network.GATEWAY}:{server.server_address[1]}/{os.path.basename(image)}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_image_template_role_makes_a_template_from_a_url_once(
        engine, cluster, image, image_url, tmp_path):
    with open(image, "rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    play = tmp_path / "image_template.yml"
    play.write_text(json.dumps([{
        "name": "image_template", "hosts": "localhost", "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "roles": [{"role": "kestrel.virt.image_template"}]}]))
    role_vars = {
        "kestrel_image_template_upload_image_url": image_url,
        "kestrel_image_template_image_checksum": f"sha256:{digest}",
        "kestrel_image_template_image_format": "qcow2",
        "kestrel_image_template_name": TEMPLATE, "kestrel_image_template_cluster": cluster,
        "kestrel_image_template_disk_storage": "data",
        "kestrel_image_template_disk_format": "raw", "kestrel_image_template_disk_size": "64MiB",
        "kestrel_image_template_memory": "128MiB", "kestrel_image_template_cpu": 2,
        "kestrel_image_template_nics": [{"name": "nic1", "network": "kestrelmgmt"}],
        "kestrel_image_template_engine_dir": str(engine.config.engine_dir),
        "kestrel_image_template_db_url": engine.store.url}

    first = ansible_playbook(play, role_vars)
    assert first.returncode == 0, first.stdout + first.stderr
    (template,) = engine.templates.info(name=TEMPLATE)
    assert template["version"]["number"] == 1 and template["memory_mib"] == 128
    assert template["cpu"]["cores"] == 2 and [n["network"] for n in template["nics"]] == [
        "kestrelmgmt"]
    (disk,) = template["disks"]
    # Downloaded by a host, converted to raw and grown to the asked size.
    assert disk["format"] == "raw" and disk["size_mib"] == 64

    again = ansible_playbook(play, role_vars)
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap(again)["changed"] == 0, again.stdout
    assert len(engine.templates.info(name=TEMPLATE)) == 1

    second = ansible_playbook(play, {**role_vars, "kestrel_image_template_version": {
        "number": 2, "name": "v2"}})
    assert second.returncode == 0, second.stdout + second.stderr
    assert [(t["version"]["number"], t["version"]["name"] or "") for t in
            sorted(engine.templates.info(name=TEMPLATE), key=lambda t: t["version"]["number"])
            ] == [(1, ""), (2, "v2")]
