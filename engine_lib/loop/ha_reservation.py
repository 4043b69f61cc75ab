"""HA reservation in the engine loop: record, each minute, whether each cluster that asks
for it could restart the HA VMs of any one failed host (scheduling.ha_reservation).

Each cluster is checked in a transaction of its own that holds the cluster row (as a
placement does), so two engine loops never both announce the same change and a check
never mixes hosts from before a placement with VMs from after it. The answer goes to
``ha_reservation_checks``; an audit event marks each change (warning when the
reservation is lost, info when it is back). A cluster whose option is off loses its row,
so turning it on again starts from "not checked yet".
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import NoResultFound

from engine_lib.model import Cluster, HaReservationCheck, Host
from engine_lib.scheduling.ha_reservation import shortfall
from engine_lib.services.common import audit
from engine_lib.services.scheduling_facts import ha_vms, host_claims, host_state
from engine_lib.store import lock_cluster

log = logging.getLogger("kestrel.engine.ha_reservation")

INTERVAL_S = 60.0


def message(short: list[str]) -> str:
    if not short:
        return "the highly available VMs of any one host could restart on the other Up hosts"
    return (f"the highly available VMs of host(s) {', '.join(short)} could not all restart on "
            "the other Up hosts if it failed")


def check_cluster(session, cluster: Cluster, now: datetime) -> dict:
    """Check one cluster (the caller holds its row) and record the answer."""
    hosts = session.scalars(select(Host).where(Host.cluster_id == cluster.id)
                            .order_by(Host.name))
    claims = host_claims(session)
    states = [host_state(h, claims.get(h.id), cluster) for h in hosts]
    placed = ha_vms(session, cluster.id)
    short = shortfall(states, placed)
    detail = {"hosts": short, "message": message(short),
              "ha_vms": sum(len(vms) for vms in placed.values())}
    row = session.get(HaReservationCheck, cluster.id)
    was = None if row is None else row.ok
    if row is None:
        row = HaReservationCheck(cluster_id=cluster.id)
        session.add(row)
    row.ok, row.checked_at, row.detail = not short, now, detail
    if short and was is not False:
        audit(session, "cluster", cluster.name, f"HA reservation lost: {detail['message']}",
              "warning")
    elif not short and was is False:
        audit(session, "cluster", cluster.name, f"HA reservation restored: {detail['message']}")
    return {"cluster": cluster.name, "ok": not short, **detail}


def check(engine, now: datetime | None = None) -> list[dict]:
    """One pass over every cluster; returns the answers of those with ha_reservation on."""
    now = now or datetime.now(UTC)
    with engine.store.transaction() as session:
        wanted = list(session.execute(select(Cluster.id, Cluster.ha_reservation)
                                      .order_by(Cluster.name)))
        off = [cluster_id for cluster_id, on in wanted if not on]
        if off:
            session.execute(delete(HaReservationCheck)
                            .where(HaReservationCheck.cluster_id.in_(off)))
    results = []
    for cluster_id, on in wanted:
        if not on:
            continue
        try:
            with engine.store.transaction() as session:
                cluster = lock_cluster(session, cluster_id)
                if cluster.ha_reservation:  # not turned off since the list was read
                    results.append(check_cluster(session, cluster, now))
        except NoResultFound:  # removed since the list was read
            continue
        except Exception:  # one cluster's failure must not hide the others'
            log.exception("HA reservation check of cluster %s failed", cluster_id)
    return results


class ReservationCheck:
    """The loop's pass (engine_lib.loop.runner), every ``INTERVAL_S``."""

    def __init__(self, engine):
        self.engine = engine

    def cycle(self) -> list[dict]:
        return check(self.engine)
