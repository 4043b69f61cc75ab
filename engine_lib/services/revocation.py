"""Revoking a removed host's certificates, and handing the CRL to the other hosts.

Removing a host revokes every certificate the engine CA issued for its name
(agent, libvirt, migration; engine_lib.pki.revoke). The new CRL goes to every
host still registered whose agent answers (PUT /pki/crl: the agent, libvirtd
and QEMU check it from then on); a host that does not answer gets it with its
next deploy (host role or reinstall), and the audit log says which missed it.
The engine itself checks its CRL for every agent it dials.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from engine_lib import pki
from engine_lib.model import Host
from engine_lib.protocol.errors import KestrelError
from engine_lib.protocol.statuses import HostStatus
from engine_lib.services.common import audit

# Hosts the engine can expect an answer from; the others get the CRL when deployed.
_REACHABLE = frozenset({HostStatus.UP, HostStatus.MAINTENANCE,
                        HostStatus.PREPARING_FOR_MAINTENANCE, HostStatus.CONNECTING})
_PARALLEL = 16


def revoke_host(engine, name: str) -> list[str]:
    """Revoke ``name``'s certificates and push the CRL; the serials revoked now."""
    revoked = pki.revoke(str(engine.config.pki_dir), name)
    if not revoked:
        return revoked
    reached, missed = push_crl(engine)
    with engine.store.transaction() as session:
        audit(session, "host", name, f"certificates of host '{name}' revoked (serials "
              f"{', '.join(revoked)}); revocation list sent to "
              f"{', '.join(reached) or 'no host'}"
              + (f"; not reached (they get it when deployed): {'; '.join(missed)}"
                 if missed else ""), "warning" if missed else "info")
    return revoked


def push_crl(engine) -> tuple[list[str], list[str]]:
    """Send the current CRL to every reachable host: (names reached, 'name: why' missed)."""
    crl = pki.crl(str(engine.config.pki_dir)).decode()
    with engine.store.transaction(commit=False) as session:
        hosts = [(h.name, h.address, h.port, h.status)
                 for h in session.scalars(select(Host).order_by(Host.name))]
    targets = [(n, a, p) for n, a, p, status in hosts if status in _REACHABLE]
    missed = [f"{n}: {status}" for n, _, _, status in hosts if status not in _REACHABLE]

    def send(target: tuple[str, str, int]) -> str | None:
        name, address, port = target
        try:
            engine.agent(address, port).install_crl(crl)
        except KestrelError as exc:
            return exc.message
        return None

    reached = []
    with ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
        for (name, _, _), error in zip(targets, pool.map(send, targets), strict=True):
            if error is None:
                reached.append(name)
            else:
                missed.append(f"{name}: {error}")
    return reached, missed
