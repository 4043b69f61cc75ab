"""Cluster memory ballooning: the agent's policy, its config, and what the engine renders.

The policy's decisions are pinned down here without libvirt; the lab test
(tests/system/test_ballooning.py) watches real balloons move.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

import libvirt
import pytest

from engine_lib.agent import config as agent_config
from engine_lib.agent.ballooning import (
    GROWING,
    IDLE,
    SHRINKING,
    BalloonedVm,
    balloon_settings,
    decide,
)
from engine_lib.agent.config import BallooningConfig
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import InvalidSpec

MiB = 1024
SETTINGS = BallooningConfig(interval_s=10, low_free_percent=20, high_free_percent=30,
                            step_percent=25)
TOTAL = 1000 * MiB


def vm(vm_id="a", memory_mib=1024, target_mib=1024, guarantee_mib=512) -> BalloonedVm:
    return BalloonedVm(vm_id, memory_mib * MiB, target_mib * MiB, guarantee_mib * MiB)


# -- the decision -------------------------------------------------------------------------


def test_short_of_memory_shrinks_each_vm_by_a_step_of_its_own_memory():
    decision = decide(100 * MiB, TOTAL, [vm("a"), vm("b", memory_mib=2048, target_mib=2048,
                                                   guarantee_mib=1024)], SETTINGS)
    assert decision.state == SHRINKING and decision.free_percent == 10.0
    assert decision.targets == {"a": 768 * MiB, "b": 1536 * MiB}


def test_shrinking_stops_at_the_guarantee():
    assert decide(0, TOTAL, [vm(target_mib=600)], SETTINGS).targets == {"a": 512 * MiB}
    at_floor = decide(0, TOTAL, [vm(target_mib=512)], SETTINGS)
    assert at_floor.state == SHRINKING and at_floor.targets == {}


def test_a_vm_without_guarantee_keeps_all_its_memory():
    assert decide(0, TOTAL, [vm(guarantee_mib=0)], SETTINGS).targets == {}


def test_a_guarantee_above_the_memory_means_no_shrinking():
    assert decide(0, TOTAL, [vm(guarantee_mib=4096)], SETTINGS).targets == {}


def test_plenty_of_memory_grows_back_to_the_full_memory_and_no_further():
    decision = decide(500 * MiB, TOTAL, [vm("a", target_mib=512), vm("b", target_mib=900),
                                         vm("c")], SETTINGS)
    assert decision.state == GROWING
    assert decision.targets == {"a": 768 * MiB, "b": 1024 * MiB}  # c is already full


def test_between_the_thresholds_nothing_moves():
    decision = decide(250 * MiB, TOTAL, [vm(target_mib=600)], SETTINGS)
    assert (decision.state, decision.targets) == (IDLE, {})


def test_thresholds_at_the_edges_always_shrink_or_always_grow():
    always_short = BallooningConfig(low_free_percent=100, high_free_percent=100)
    always_plenty = BallooningConfig(low_free_percent=0, high_free_percent=0)
    assert decide(TOTAL - 1, TOTAL, [vm()], always_short).state == SHRINKING
    assert decide(1, TOTAL, [vm(target_mib=512)], always_plenty).state == GROWING


def test_the_step_is_at_least_one_kib():
    tiny = BallooningConfig(step_percent=0.1)
    assert decide(0, TOTAL, [BalloonedVm("a", 100, 100, 50)], tiny).targets == {"a": 99}


# -- the VM's flag and guarantee in our metadata ----------------------------------------


def _meta(inner: str) -> str:
    return f"<kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>{inner}</kestrel:vm>"


def test_metadata_flag_and_guarantee_are_read():
    assert balloon_settings(_meta("<kestrel:balloon guarantee_mib='64' ballooning='on'/>")) \
        == (True, 64)
    assert balloon_settings(_meta("<kestrel:balloon guarantee_mib='64'/>")) == (False, 64)
    assert balloon_settings(_meta("<kestrel:cluster>c</kestrel:cluster>")) == (False, 0)
    assert balloon_settings(_meta("<kestrel:balloon guarantee_mib='x' ballooning='on'/>")) \
        == (True, 0)


# -- agent.conf [ballooning] --------------------------------------------------------------


def test_config_defaults_are_moms():
    config = agent_config.loads("")
    assert config.ballooning == BallooningConfig(10, 20, 30, 5)


def test_config_section_is_read():
    config = agent_config.loads("[ballooning]\ninterval = 1.5\nlow_free_percent = 100\n"
                                "high_free_percent = 100\nstep_percent = 25\n")
    assert config.ballooning == BallooningConfig(1.5, 100, 100, 25)


@pytest.mark.parametrize("text, key, reason", [
    ("interval = 0", "interval", "not a number from 0.1 to 3600"),
    ("low_free_percent = lots", "low_free_percent", "not a number from 0 to 100"),
    ("step_percent = nan", "step_percent", "not a number from 0.1 to 100"),
    ("low_free_percent = 40\nhigh_free_percent = 30", "high_free_percent",
     "below low_free_percent"),
    ("pressure = 3", "pressure", "unknown key"),
])
def test_bad_config_names_the_key_and_the_reason(text, key, reason):
    with pytest.raises(InvalidSpec) as info:
        agent_config.loads(f"[ballooning]\n{text}\n", "agent.conf")
    assert info.value.field == f"agent.conf [ballooning] {key}"
    assert reason in info.value.reason


# -- the engine: cluster option and rendering ---------------------------------------------

GUEST = {"name": "g1", "memory": "256MiB", "balloon": {"guarantee": "128MiB"}}


def _balloon_parts(xml: str):
    root = ET.fromstring(xml)
    flag = root.find(f"metadata/{{{metadata.NAMESPACE}}}vm/{{{metadata.NAMESPACE}}}balloon")
    return flag, root.find("devices/memballoon")


def test_cluster_ballooning_defaults_off_and_is_idempotent(engine):
    created = engine.clusters.ensure("c1", virt_type="qemu")
    assert created.entity["ballooning"] is False
    predicted = engine.clusters.ensure("c1", ballooning=True, check_mode=True)
    assert predicted.changed and predicted.entity["ballooning"] is True
    assert engine.clusters.get("c1")["ballooning"] is False  # check mode wrote nothing
    turned_on = engine.clusters.ensure("c1", ballooning=True)
    assert turned_on.changed and turned_on.diff["before"]["ballooning"] is False
    assert turned_on.diff["after"]["ballooning"] is True
    assert not engine.clusters.ensure("c1", ballooning=True).changed
    assert not engine.clusters.ensure("c1", description="").changed  # kept when not given
    assert engine.clusters.get("c1")["ballooning"] is True


def test_bad_ballooning_value_names_the_option_and_changes_nothing(engine):
    engine.clusters.ensure("c1")
    with pytest.raises(InvalidSpec) as info:
        engine.clusters.ensure("c1", ballooning="yes", description="changed")
    assert info.value.field == "ballooning" and "true or false" in info.value.reason
    assert engine.clusters.get("c1")["description"] == ""


def test_a_ballooning_cluster_renders_the_flag_and_balloon_statistics(engine):
    engine.clusters.ensure("c1", virt_type="qemu", ballooning=True)
    engine.vms.ensure({**GUEST, "cluster": "c1"}, state="present")
    xml = engine.vms.domain_xml("g1")
    flag, balloon = _balloon_parts(xml)
    assert (flag.get("ballooning"), flag.get("guarantee_mib")) == ("on", "128")
    assert balloon.get("model") == "virtio" and balloon.find("stats").get("period") == "5"
    conn = libvirt.open("test:///default")  # libvirt accepts it (RelaxNG)
    try:
        conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE).undefine()
    finally:
        conn.close()


def test_without_ballooning_the_guarantee_stays_but_no_flag_and_no_statistics(engine):
    engine.clusters.ensure("c1", virt_type="qemu")
    engine.vms.ensure({**GUEST, "cluster": "c1"}, state="present")
    flag, balloon = _balloon_parts(engine.vms.domain_xml("g1"))
    assert flag.get("ballooning") is None and flag.get("guarantee_mib") == "128"
    assert balloon.find("stats") is None


def test_a_vm_without_balloon_gets_no_flag_in_a_ballooning_cluster(engine):
    engine.clusters.ensure("c1", virt_type="qemu", ballooning=True)
    engine.vms.ensure({"name": "g2", "cluster": "c1", "balloon": False}, state="present")
    flag, balloon = _balloon_parts(engine.vms.domain_xml("g2"))
    assert flag is None and balloon.get("model") == "none"


# -- one round of the policy on libvirt's in-process test driver -------------------------


class _Registry:
    def __init__(self, records):
        self.records = records

    def all(self):
        return self.records


class _Hypervisor:
    def __init__(self, conn, records):
        self.conn, self.registry = conn, _Registry(records)

    def connection(self):
        return self.conn


def _test_domain(conn, name: str, vm_id: str, balloon_meta: str):
    return conn.createXML(f"""<domain type='test'><name>{name}</name><uuid>{vm_id}</uuid>
      <metadata><kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>{balloon_meta}</kestrel:vm>
      </metadata><memory unit='MiB'>128</memory><os><type>hvm</type></os>
      <devices><memballoon model='virtio'/></devices></domain>""", 0)


def test_a_round_shrinks_only_flagged_vms_that_are_up_and_reports_it():
    from engine_lib.agent.ballooning import BalloonPolicy
    from engine_lib.agent.registry import VmRecord
    from engine_lib.agent.states import VmStatus

    conn = libvirt.open("test:///default")  # shared in this process: leave nothing behind
    ids = [str(uuid.uuid4()) for _ in range(3)]
    try:
        flagged = _test_domain(conn, f"flagged-{ids[0][:8]}", ids[0],
                               "<kestrel:balloon guarantee_mib='64' ballooning='on'/>")
        unflagged = _test_domain(conn, f"unflagged-{ids[1][:8]}", ids[1],
                                 "<kestrel:balloon guarantee_mib='64'/>")
        paused = _test_domain(conn, f"paused-{ids[2][:8]}", ids[2],
                              "<kestrel:balloon guarantee_mib='64' ballooning='on'/>")
        records = [VmRecord(ids[0], "flagged", VmStatus.UP),
                   VmRecord(ids[1], "unflagged", VmStatus.UP),
                   VmRecord(ids[2], "paused", VmStatus.PAUSED)]
        # The test driver's host has (almost) no free memory: always short.
        policy = BalloonPolicy(_Hypervisor(conn, records),
                               BallooningConfig(low_free_percent=50, high_free_percent=50,
                                                step_percent=25))
        rounds = [policy.tick().targets for _ in range(3)]
        assert rounds == [{ids[0]: 96 * MiB}, {ids[0]: 64 * MiB}, {}]
        assert flagged.info()[2] == 64 * MiB and policy.target_kib(ids[0]) == 64 * MiB
        assert unflagged.info()[2] == paused.info()[2] == 128 * MiB
        assert policy.target_kib(ids[1]) is None
        report = policy.report()
        assert (report["state"], report["vms"], report["adjusted"]) == (SHRINKING, 1, 0)

        policy.settings = BallooningConfig(low_free_percent=0, high_free_percent=0,
                                           step_percent=50)
        assert policy.tick().targets == {ids[0]: 128 * MiB}
        assert flagged.info()[2] == 128 * MiB and policy.report()["state"] == GROWING
    finally:
        for dom in conn.listAllDomains():
            if dom.UUIDString() in ids:
                dom.destroy()
        conn.close()


class _NodeMemory:
    def getMemoryStats(self, _cell, _flags):
        return {"total": 1000, "free": 100, "buffers": 50, "cached": 250}


def test_page_cache_and_buffers_count_as_free_host_memory():
    from engine_lib.agent.ballooning import host_memory_kib

    assert host_memory_kib(_NodeMemory()) == (400, 1000)
