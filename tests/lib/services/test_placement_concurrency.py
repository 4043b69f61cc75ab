"""Placements claim resources in the transaction that records them."""

from concurrent.futures import ThreadPoolExecutor

from engine_lib.protocol.errors import NoValidHost


def test_eight_concurrent_starts_with_room_for_four(engine, cluster, agents):
    for index, address in enumerate(("10.0.1.1", "10.0.1.2")):
        engine.hosts.ensure(f"h{index}", address=address, cluster=cluster)
        agents[address].memory_mib = 1024
        engine.hosts.ensure(f"h{index}", address=address, cluster=cluster)
    names = [f"vm{i}" for i in range(8)]
    for name in names:
        engine.vms.ensure({"name": name, "cluster": cluster, "memory": "512MiB"}, state="present")

    def start(name):
        try:
            engine.vms.ensure({"name": name}, state="running")
            return "started"
        except NoValidHost as err:
            return err

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(start, names))

    started = [r for r in results if r == "started"]
    refused = [r for r in results if isinstance(r, NoValidHost)]
    assert len(started) == 4 and len(refused) == 4
    assert all("needs 512 MiB, has 0 MiB schedulable" in r.message for r in refused)
    per_host = {}
    for vm in engine.vms.info():
        if vm["status"] == "Up":
            per_host[vm["host"]] = per_host.get(vm["host"], 0) + vm["memory_mib"]
    assert per_host == {"h0": 1024, "h1": 1024}
