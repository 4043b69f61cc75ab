"""The kestrel.virt.kestrel inventory through a real ansible-inventory."""

import json
import os
import subprocess
import sys
from pathlib import Path

from engine_fixtures import _collections_path


def test_vms_grouped_by_cluster_host_and_status(engine, engine_dir, tmp_path, agents):
    engine.clusters.ensure("inv", virt_type="qemu", custom_properties={"role": "[a-z]+"})
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="inv")
    web = engine.vms.ensure({"name": "web-1", "cluster": "inv", "memory": 128, "machine": "pc",
                             "kernel": "images:vmlinuz", "initrd": "images:initrd.img",
                             "custom_properties": {"role": "web"},
                             "nics": [{"name": "nic1", "network": "kestrelmgmt"}]},
                            state="running").entity
    engine.vms.ensure({"name": "db-1", "cluster": "inv", "memory": 128}, state="present")
    config = tmp_path / "kestrel.yml"
    config.write_text(f"plugin: kestrel.virt.kestrel\nengine_dir: {engine_dir}\n"
                      f"db_url: {engine.store.url}\n"
                      "keyed_groups:\n  - key: kestrel_custom_properties.role | default('none')\n"
                      "    prefix: role\n")
    try:
        inventory = ansible_inventory(config)
    finally:
        engine.vms.ensure({"name": "web-1"}, state="absent")
    assert sorted(inventory["cluster_inv"]["hosts"]) == ["db-1", "web-1"]
    assert inventory["status_up"]["hosts"] == ["web-1"]
    assert inventory["status_down"]["hosts"] == ["db-1"]
    assert inventory[f"host_{web['host']}"]["hosts"] == ["web-1"]
    assert inventory["role_web"]["hosts"] == ["web-1"]
    facts = inventory["_meta"]["hostvars"]["web-1"]
    assert facts["kestrel_host"] == web["host"] and facts["kestrel_status"] == "Up"
    assert facts["kestrel_nics"][0]["mac"] == web["nics"][0]["mac"]


def ansible_inventory(config: Path) -> dict:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(config), "--list"],
        env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": _collections_path(),
             "ANSIBLE_INVENTORY_ENABLED": "kestrel.virt.kestrel"},
        capture_output=True, text=True, timeout=120, check=True)
    # ansible-core 2.19 marks inventory strings as unsafe in its JSON dump.
    return json.loads(result.stdout, object_hook=lambda d: d.get("__ansible_unsafe", d))
