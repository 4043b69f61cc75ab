"""Temporary: figures for the report (h3). Deleted after use."""
import json
import threading
import time

from test_agent_hibernation import boot, memory_volume, read_marker, write_marker, cleanup  # noqa: F401
from engine_lib.event_follower import EventFollower


def test_measure(engine, agents, lab, lab_guest, cleanup):  # noqa: F811
    figures = {}
    a0, a1 = agents[0], agents[1]
    t = time.monotonic()
    xml, vm_id, memory = boot(a0, cleanup)
    figures["boot_to_guest_agent_s"] = round(time.monotonic() - t, 2)
    write_marker(a0, vm_id, "x")
    t = time.monotonic()
    saved = a0.client().hibernate_vm(vm_id, memory)
    figures["hibernate_s"] = round(time.monotonic() - t, 2)
    figures["memory_volume_mib"] = round(saved["size_bytes"] / 2**20, 1)
    a0.client().remove_vm(vm_id)
    t = time.monotonic()
    a1.client().restore_vm(xml, memory)
    figures["restore_other_host_s"] = round(time.monotonic() - t, 2)
    assert read_marker(a1, vm_id) == "x"

    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    spec = {"name": "meas1", "cluster": "lab", "memory": "128MiB", "machine": "pc",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img", "cmdline": "console=ttyS0",
            "disks": [{"name": "data", "size": "64MiB", "storage_domain": "data"}]}
    vm = engine.vms.ensure(spec, state="running").entity
    agent = next(a for a in agents if a.name == vm["host"])
    while "built-in shell" not in engine.vms.console("meas1"):
        time.sleep(0.2)
    follower = EventFollower(engine, poll_timeout=5, hosts_interval=0.5)
    stop = threading.Event()
    th = threading.Thread(target=follower.run, args=(stop,), daemon=True)
    th.start()
    time.sleep(2)
    t = time.monotonic()
    agent.run(["virsh", "-c", "qemu:///system", "shutdown", vm["id"]])
    while engine.vms.info("meas1")[0]["status"] != "Down":
        time.sleep(0.01)
    figures["power_button_to_engine_down_s"] = round(time.monotonic() - t, 2)
    stop.set()
    th.join(10)
    engine.vms.ensure({"name": "meas1"}, state="absent")
    print("FIGURES " + json.dumps(figures))
