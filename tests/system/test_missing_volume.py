"""A disk that has run never boots blank: its missing volume fails the start (real agents,
real qemu-img, the lab's shared storage domain)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_engine_on_lab import tiny_guest

from engine_lib.protocol.errors import Conflict
from kestrel_lab import hosts as lab_hosts


@pytest.fixture
def cluster(engine, agents):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    return "lab"


def test_a_volume_gone_after_the_first_start_fails_the_next_and_is_not_recreated(
        engine, cluster, lab):
    vm = engine.vms.ensure(tiny_guest("blank"), state="running").entity
    disk = vm["disks"][0]
    volume = Path(lab_hosts.shared_dir(lab[0].state_dir, "data"), disk["image_id"],
                  disk["volume_id"])
    assert volume.exists()  # the first start created it
    engine.vms.ensure({"name": "blank"}, state="stopped", force=True)
    volume.unlink()  # a half-finished removal, or a domain not mounted

    with pytest.raises(Conflict, match=r"disk 'data': its volume \S+ is missing on storage "
                                       r"domain 'data'") as info:
        engine.vms.ensure({"name": "blank"}, state="running")

    assert info.value.details["path"].endswith(f"{disk['image_id']}/{disk['volume_id']}")
    assert not volume.exists()
    assert engine.vms.info("blank")[0]["status"] == "Down"
    engine.vms.ensure({"name": "blank"}, state="absent")
