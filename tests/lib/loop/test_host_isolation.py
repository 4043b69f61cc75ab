"""One hung host delays nothing of the others: the whole engine loop (runner.run) with
three hosts, one of whose agents hangs for real (a socket that accepts and never speaks
TLS, as a stopped agent's does: each call waits for its deadline).

While the hung host's heartbeats wait, the healthy host's heartbeats keep their
interval, and a third host that went silent is fenced and its HA VM restarted on the
healthy host, before the hung host's heartbeat has even returned.
"""

import functools
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import FakeAgent
from sqlalchemy import update
from test_ha import device  # noqa: F401 - the fence device fixture, a script and a file

from engine_lib import pki
from engine_lib.broker import AgentClient
from engine_lib.loop import fencing, runner
from engine_lib.loop.fencing import Result
from engine_lib.loop.ha import HighAvailability
from engine_lib.loop.monitoring import Intervals, Monitor
from engine_lib.model import Host

# Long, so that a loaded machine cannot make a restart that waited for nothing look late;
# it costs nothing when all is well: the test ends (and the hung calls with it) at the restart.
HEARTBEAT_WAIT_S = 15.0
INTERVALS = Intervals(host_s=0.1, vm_s=0.1, non_responsive_after_s=60,
                      heartbeat_timeout_s=HEARTBEAT_WAIT_S)


class LoopAgent(FakeAgent):
    """A FakeAgent whose event stream has nothing to say (the event follower asks)."""

    closed = threading.Event()

    def events(self, after=0, timeout=0):
        self._check()
        self.closed.wait(timeout)
        return {"instance": self.name, "seq": 0, "events": []}


class StoppedAgent:
    """A listening socket whose connections are accepted and never answered."""

    def __init__(self, on_accept):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.on_accept = on_accept
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)
            self.on_accept(len(self.accepted))

    def close(self):
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self.accepted:  # the calls still waiting end now
            conn.close()


class HungAgent(LoopAgent):
    """Answers through a real client to a stopped agent once ``hung`` is set."""

    def __init__(self, name, client: AgentClient):
        super().__init__(name)
        self.client, self.hung = client, False
        self.calls_in_flight = 0

    def host_info(self, timeout=None):
        if not self.hung:
            return super().host_info(timeout)
        self.calls_in_flight += 1
        try:
            return self.client.host_info(timeout)
        finally:
            self.calls_in_flight -= 1

    def list_vms(self):
        return self.client.list_vms() if self.hung else super().list_vms()


class HealthyAgent(LoopAgent):
    """Notes when its heartbeats come, and whether the hung host's call was still waiting
    when an HA restart reached it."""

    def __init__(self, name, hung: HungAgent):
        super().__init__(name)
        self.hung, self.beats = hung, []
        self.restarted = threading.Event()
        self.restarted_while_hung: bool | None = None

    def host_info(self, timeout=None):
        self.beats.append(time.monotonic())
        return super().host_info(timeout)

    def start_vm(self, xml, mode="fresh"):
        self.restarted_while_hung = self.hung.calls_in_flight > 0
        answer = super().start_vm(xml, mode)
        self.restarted.set()
        return answer


@pytest.fixture
def hosts(engine, cluster, agents, device, tmp_path, monkeypatch):
    """h3 runs an HA VM and has a fence device; h1 and h2 are empty; h2's agent can hang,
    and has just stopped answering (Connecting). Once h2's heartbeat waits, the clock of
    the loop's decisions jumps two minutes ahead: h3's silence has lasted long enough."""
    pki.init_ca(str(tmp_path / "pki"))
    offset = [timedelta(0)]
    hung_calls: list[float] = []

    def on_accept(count):
        hung_calls.append(time.monotonic())
        offset[0] = timedelta(seconds=120)

    stopped = StoppedAgent(on_accept)
    h2 = agents["10.0.0.2"] = HungAgent(
        "10.0.0.2", AgentClient("127.0.0.1", stopped.port, str(tmp_path / "pki")))
    h1 = agents["10.0.0.1"] = HealthyAgent("10.0.0.1", h2)
    h3 = agents["10.0.0.3"] = LoopAgent("10.0.0.3")
    engine.clusters.ensure(cluster, fencing_policy={"skip_if_connectivity_broken": False})
    engine.hosts.ensure("h3", address="10.0.0.3", cluster=cluster, power_management=device)
    engine.vms.ensure({"name": "ha", "cluster": cluster, "memory": 256,
                       "high_availability": {"enabled": True}}, state="running")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    with engine.store.transaction() as session:
        session.execute(update(Host).where(Host.name == "h2").values(status="Connecting"))

    def clock():
        return datetime.now(UTC) + offset[0]
    monkeypatch.setattr(runner, "Monitor", functools.partial(Monitor, clock=clock))
    monkeypatch.setattr(runner, "HighAvailability",
                        functools.partial(HighAvailability, clock=clock))
    monkeypatch.setattr(fencing, "soft_fence", lambda *args: Result(False, "exit 255"))
    yield h1, h2, h3, hung_calls
    stopped.close()  # h2's waiting heartbeat ends; its thread records that, then ends
    for thread in threading.enumerate():
        if thread.name.startswith(("monitoring-", "fencing-")):
            thread.join(10)
    LoopAgent.closed.clear()


def _until_beats(agent: HealthyAgent, since: float, count: int, deadline: float) -> float:
    """When ``agent`` has had ``count`` heartbeats since ``since`` (or the deadline passed)."""
    while sum(t >= since for t in agent.beats) < count and time.monotonic() < deadline:
        time.sleep(INTERVALS.host_s / 2)
    return time.monotonic()


def test_a_hung_host_delays_neither_heartbeats_nor_fencing_nor_ha_restarts_elsewhere(
        engine, hosts):
    h1, h2, h3, hung_calls = hosts
    h2.hung, h3.reachable = True, False
    stop = threading.Event()
    loop = threading.Thread(target=runner.run, args=(engine, runner.Settings(
        INTERVALS, balance_interval_s=0, ssh_key="/nonexistent"), stop))
    loop.start()
    try:
        assert h1.restarted.wait(4 * HEARTBEAT_WAIT_S)
        restarted = time.monotonic()
        # A restart can come within two heartbeat intervals of the hung call: watch h1's
        # heartbeats for a few intervals more, while h2's call still waits.
        watched_until = _until_beats(h1, since=hung_calls[0], count=3,
                                     deadline=hung_calls[0] + HEARTBEAT_WAIT_S / 2)
        still_hung = h2.calls_in_flight > 0
    finally:
        LoopAgent.closed.set()  # the event follower's long polls end
        stop.set()
        loop.join(10)
    # h3 was fenced and its VM restarted on h1 while h2's first heartbeat still waited.
    assert h1.restarted_while_hung is True
    assert len(hung_calls) == 1 and restarted - hung_calls[0] < HEARTBEAT_WAIT_S
    vm = engine.vms.info("ha")[0]
    assert (vm["status"], vm["host"]) == ("Up", "h1")
    assert engine.hosts.info("h3")[0]["fence_state"] in ("fenced", "fenced_on")
    # h1's heartbeats kept coming the whole time h2's waited: a few intervals apart when
    # the machine is idle, seconds under a heavy load; waiting for h2 makes a gap of
    # HEARTBEAT_WAIT_S.
    assert still_hung
    beats = [t for t in h1.beats if hung_calls[0] <= t <= watched_until]
    gaps = [later - earlier for earlier, later in zip(beats, beats[1:])]
    assert len(beats) >= 3
    assert max(gaps) < HEARTBEAT_WAIT_S / 2, max(gaps)
    print(f"restart {restarted - hung_calls[0]:.2f}s into the hung heartbeat; h1 beats "
          f"{len(beats)}, largest gap {max(gaps):.2f}s")
