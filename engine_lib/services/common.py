"""Lookups and the audit log, shared by the services."""

from __future__ import annotations

import errno
import functools
import os
import random
import time
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from engine_lib.model import AuditEntry, Cluster, Host, StorageDomain, Vm
from engine_lib.protocol.errors import (
    AgentUnreachable,
    CertificateError,
    ClusterNotFound,
    Conflict,
    HostNotFound,
    KestrelError,
    VmNotFound,
)
from engine_lib.services import actor


def find(session: Session, entity, name: str):
    return session.execute(select(entity).where(entity.name == name)).scalar_one_or_none()


def get_cluster(session: Session, name: str) -> Cluster:
    return find(session, Cluster, name) or _raise(ClusterNotFound(name))


def get_host(session: Session, name: str) -> Host:
    return find(session, Host, name) or _raise(HostNotFound(name))


def get_vm(session: Session, name: str) -> Vm:
    return find(session, Vm, name) or _raise(VmNotFound(name))


def attached_names(session: Session, cluster: Cluster) -> set[str]:
    """Names of the storage domains attached to the cluster (empty: any name goes)."""
    return set(session.scalars(select(StorageDomain.name).join(StorageDomain.clusters)
                               .where(Cluster.id == cluster.id)))


# Causes of AgentUnreachable (the client's) that mean no connection was made.
_NOT_CONNECTED = {"dns"} | {os.strerror(code) for code in (
    errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)}


def outcome_unknown(error: KestrelError) -> bool:
    """Whether a call that failed with ``error`` may still have been carried out: the
    request may have reached the agent (a timeout, a reset) and only the answer was lost.
    A name that did not resolve, a refused connection or a TLS handshake that failed sent
    nothing."""
    return (isinstance(error, AgentUnreachable) and not isinstance(error, CertificateError)
            and error.details.get("cause") not in _NOT_CONNECTED)


def as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; all ours are UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso_utc(moment: datetime | None) -> str | None:
    return None if moment is None else as_utc(moment).isoformat()


def _raise(error: Exception):
    raise error


def audit(session: Session, entity_type: str, name: str, message: str,
          severity: str = "info") -> None:
    who = actor.current()
    session.add(AuditEntry(entity_type=entity_type, entity_name=name, message=message,
                           severity=severity, user_name=who.name, token_id=who.token_id))


def flush_new(session: Session, what: str) -> None:
    """Insert pending rows; another writer's row of the same name that won the unique
    index meanwhile makes this call a Conflict (run again), not a database error."""
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"{what} was being created by someone else at the same time; "
                       "nothing was changed, run again") from None


def changed_fields(entity, wanted: dict) -> dict:
    """The subset of ``wanted`` that differs from the entity; None means 'keep'."""
    return {key: value for key, value in wanted.items()
            if value is not None and getattr(entity, key) != value}


CONFLICT_ATTEMPTS = 8


def retry_on_conflict(func):
    """Run an idempotent write again when another writer changed its row meanwhile.

    Every entity has a row version, so a write based on a stale read fails
    instead of overwriting (the engine loop beats on host rows every few
    seconds while playbooks change them). The wrapped operation re-reads and
    recomputes from scratch, so running it again is safe.
    """
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                return func(*args, **kwargs)
            except StaleDataError:
                # Back off a little, randomly, so two retrying writers stop colliding.
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                if attempt == CONFLICT_ATTEMPTS - 1:
                    raise Conflict(f"{func.__qualname__}: the row kept changing under "
                                   f"{CONFLICT_ATTEMPTS} attempts; run again") from None
    return wrapper
