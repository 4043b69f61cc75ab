"""A stand-in for the engine's migration service, for tests of maintenance and balancing logic.

It has the service's interface (``migrate``, ``cancel``, ``active``) and does what a
successful live migration leaves behind: the VM runs on the destination's FakeAgent,
the database says so, and the migrations table records it (finished). The
destination, when not given, is the scheduler's answer over the same cluster facts
the engine uses. Real migrations are exercised
by the system tests on the lab.
"""

from __future__ import annotations

from engine_lib.model import Migration, utcnow
from engine_lib.protocol.errors import AgentError, NoValidHost
from engine_lib.scheduling import place
from engine_lib.services import cluster_facts
from engine_lib.services.common import get_host, get_vm
from engine_lib.services.results import Outcome
from engine_lib.store import lock_cluster


class FakeMigrations:
    def __init__(self, engine, agents: dict):
        self.engine, self.agents = engine, agents
        self.calls: list[tuple[str, str | None]] = []
        # VM names whose migration fails (the VM stays on its source).
        self.failing: set[str] = set()
        # What active() reports: migrations another caller has in flight.
        self.in_flight: list[dict] = []

    def migrate(self, vm, *, host=None, policy=None, bandwidth_mbps=None, wait=True,
                timeout=600, check_mode=False, progress=None):
        self.calls.append((vm, host))
        with self.engine.store.transaction(commit=not check_mode) as session:
            row = get_vm(session, vm)
            source = row.run_on_host
            if vm in self.failing:
                raise AgentError(f"migration of VM '{vm}' to its destination failed: "
                                 "connection reset", vm=vm)
            if host is None:
                facts = cluster_facts.load(session, lock_cluster(session, row.cluster_id))
                request = next(r.request for r in facts.running if r.name == vm)
                decision = place(request, facts.hosts, facts.policy, facts.context)
                if decision.host is None:
                    raise NoValidHost(vm, decision.explain())
                host = decision.host
            destination = get_host(session, host)
            row.run_on_host = destination
            session.add(Migration(vm_id=row.id, vm_name=vm, source=source.name,
                                  destination=host, status="succeeded", finished_at=utcnow()))
            if not check_mode:
                status = self.agents[source.address].vms.pop(row.id)
                self.agents[destination.address].vms[row.id] = status
        return Outcome(True, {"vm": vm, "source": source.name, "destination": host,
                              "status": "succeeded", "downtime_ms": 12, "duration_s": 0.5,
                              "policy": policy or "minimal_downtime", "progress": {}})

    def cancel(self, vm):
        return Outcome(False, {"vm": vm, "status": "cancelled"})

    def active(self):
        return list(self.in_flight)
