"""Cluster memory ballooning on a lab host: real guests, real balloons, the real agent policy.

A guest of a cluster with ``ballooning: true`` and a guarantee below its memory
runs on h1 next to a guest rendered by a cluster without it. The lab hosts share
this machine's memory (about 23 GiB, mostly free), so real memory pressure
cannot be made without starving everyone else; instead the agent's thresholds
are set so that the host counts as short of memory (``low_free_percent = 100``:
free memory is always under 100%) and then as having plenty
(``high_free_percent = 0``), through agent.conf and an agent restart. What moves
is checked where a user checks it: ``virsh dommemstat`` (``actual``, what the
guest's balloon driver gave back) inside the host.
"""

from __future__ import annotations

import time

import pytest
from agent_fixtures import CONFIG_PATH, agent_config_text, restart_agent, stop_agent

VIRSH = ["virsh", "-c", "qemu:///system"]
MEMORY_KIB = 256 * 1024
GUARANTEE_KIB = 128 * 1024
INTERVAL_S = 1
SHORT = "[ballooning]\ninterval = 1\nlow_free_percent = 100\nhigh_free_percent = 100\n" \
        "step_percent = 25\n"
PLENTY = "[ballooning]\ninterval = 1\nlow_free_percent = 0\nhigh_free_percent = 0\n" \
         "step_percent = 25\n"


def guest(name: str, cluster: str) -> dict:
    return {"name": name, "cluster": cluster, "memory": "256MiB", "machine": "pc",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img", "cmdline": "console=ttyS0",
            "balloon": {"guarantee": "128MiB"}}


def actual_kib(agent, name: str) -> int:
    out = agent.run([*VIRSH, "dommemstat", name], text=True).stdout
    stats = dict(line.split() for line in out.splitlines() if line.strip())
    return int(stats["actual"])


def wait_for(what: str, check, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout}s")
        time.sleep(0.5)


def reconfigure(agent, extra: str) -> None:
    """Rewrite the agent's config with ``extra`` appended and restart it (VMs keep running)."""
    stop_agent(agent.pid)
    agent.run(["sh", "-c", 'cat > "$1"', "write", CONFIG_PATH],
              input=(agent_config_text(agent.host) + extra).encode())
    restart_agent(agent)


@pytest.fixture
def h1(agents):
    agent = agents[0]
    yield agent
    reconfigure(agent, "")  # the session's agents go on with the default policy


def test_balloon_shrinks_to_the_guarantee_under_pressure_and_grows_back(engine, h1, lab_guest):
    engine.clusters.ensure("ballooned", virt_type="qemu", ballooning=True)
    engine.clusters.ensure("plain", virt_type="qemu")
    engine.hosts.ensure(h1.name, address=h1.address, cluster="ballooned")
    # A VM of a cluster without ballooning, rendered by the engine and started on the same
    # host through its agent (a host belongs to one cluster, its agent serves all domains).
    engine.vms.ensure(guest("unballooned", "plain"), state="present")
    plain_xml = engine.vms.domain_xml("unballooned")
    assert "ballooning=" not in plain_xml
    plain_id = engine.vms.info("unballooned")[0]["id"]
    client = h1.client()
    started = False
    try:
        vm = engine.vms.ensure(guest("ballooned", "ballooned"), state="running").entity
        assert vm["host"] == h1.name
        client.start_vm(plain_xml)
        started = True
        for name in ("ballooned", "unballooned"):  # both balloon drivers are loaded
            vm_id = engine.vms.info(name)[0]["id"]
            wait_for(f"{name} booted",
                     lambda i=vm_id: "kestrel-guest: up" in client.console_log(i))
        assert actual_kib(h1, "ballooned") == MEMORY_KIB

        # Short of memory: the ballooned guest gives memory back step by step, down to its
        # guarantee and no further; the other guest keeps all of its memory.
        reconfigure(h1, SHORT)
        wait_for("the balloon at the guarantee",
                 lambda: actual_kib(h1, "ballooned") == GUARANTEE_KIB)
        time.sleep(4 * INTERVAL_S)
        assert actual_kib(h1, "ballooned") == GUARANTEE_KIB
        assert actual_kib(h1, "unballooned") == MEMORY_KIB
        stats = h1.client().stats()
        assert stats["host"]["ballooning"]["state"] == "shrinking"
        assert stats["host"]["ballooning"]["vms"] == 1
        by_id = {v["id"]: v for v in stats["vms"]}
        assert by_id[vm["id"]]["memory"]["target_kib"] == GUARANTEE_KIB
        assert by_id[vm["id"]]["memory"]["current_kib"] == GUARANTEE_KIB
        assert "target_kib" not in by_id[plain_id]["memory"]

        # Plenty of memory again: back to the full memory.
        reconfigure(h1, PLENTY)
        wait_for("the balloon back at full memory",
                 lambda: actual_kib(h1, "ballooned") == MEMORY_KIB)
        assert actual_kib(h1, "unballooned") == MEMORY_KIB
        assert h1.client().stats()["host"]["ballooning"]["state"] == "growing"
    finally:
        client = h1.client()
        if started:
            client.destroy_vm(plain_id)
            client.remove_vm(plain_id)
        engine.vms.ensure({"name": "ballooned"}, state="absent")
        engine.vms.ensure({"name": "unballooned"}, state="absent")
        # h1 stays in this test's own database: removing it would revoke the certificates
        # the session's lab agent on h1 still serves with.


def test_cluster_ballooning_option_in_three_beats_with_diff(playbook):
    task = {"kestrel.virt.cluster": {"name": "c1", "ballooning": True}}
    results = playbook.run([{"kestrel.virt.cluster": {"name": "c1"}},
                            {**task, "check_mode": True, "diff": True}, task,
                            {**task, "check_mode": True},
                            {"kestrel.virt.cluster": {"name": "c1", "ballooning": "maybe"}}])
    created, check, real, again, bad = results
    assert created["cluster"]["ballooning"] is False  # oVirt's default
    assert check["changed"] and check["cluster"]["ballooning"] is True
    assert (check["diff"]["before"]["ballooning"], check["diff"]["after"]["ballooning"]) == (
        False, True)
    assert real["changed"] and real["cluster"]["ballooning"] is True
    assert not again["changed"]
    assert bad["failed"] and "ballooning" in bad["msg"]
