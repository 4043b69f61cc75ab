"""The engine loop and playbooks write the same rows at once; no writer fails or loses."""

import threading

from engine_lib.loop.monitoring import Monitor


def test_heartbeats_and_host_updates_at_once(engine, cluster, agents):
    engine.hosts.ensure("h1", address="10.0.3.1", cluster=cluster)
    engine.clusters.ensure("c2")
    monitor = Monitor(engine)
    errors = []
    done = threading.Event()

    def loop():
        try:
            while not done.wait(0.005):  # a beat every few ms: far above the real 3 s
                monitor.cycle()
        except Exception as err:
            errors.append(err)

    beating = threading.Thread(target=loop)
    beating.start()
    try:
        for index in range(30):
            # Alternate the host's cluster so every run really updates the row.
            target = cluster if index % 2 else "c2"
            assert engine.hosts.ensure("h1", address="10.0.3.1", cluster=target).changed
    finally:
        done.set()
        beating.join()
    assert errors == []
    assert engine.hosts.info()[0]["cluster"] == cluster
    assert engine.hosts.info()[0]["status"] == "Up"
