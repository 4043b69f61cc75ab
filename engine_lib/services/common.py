"""Lookups and the audit log, shared by the services."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine_lib.errors import ClusterNotFound, HostNotFound, VmNotFound
from engine_lib.model import AuditEntry, Cluster, Host, Vm


def find(session: Session, entity, name: str):
    return session.execute(select(entity).where(entity.name == name)).scalar_one_or_none()


def get_cluster(session: Session, name: str) -> Cluster:
    return find(session, Cluster, name) or _raise(ClusterNotFound(name))


def get_host(session: Session, name: str) -> Host:
    return find(session, Host, name) or _raise(HostNotFound(name))


def get_vm(session: Session, name: str) -> Vm:
    return find(session, Vm, name) or _raise(VmNotFound(name))


def _raise(error: Exception):
    raise error


def audit(session: Session, entity_type: str, name: str, message: str,
          severity: str = "info") -> None:
    session.add(AuditEntry(entity_type=entity_type, entity_name=name, message=message,
                           severity=severity))


def changed_fields(entity, wanted: dict) -> dict:
    """The subset of ``wanted`` that differs from the entity; None means 'keep'."""
    return {key: value for key, value in wanted.items()
            if value is not None and getattr(entity, key) != value}
