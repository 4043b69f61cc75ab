"""The audit log, as users read it: what happened to which entity, and when."""

from __future__ import annotations

from sqlalchemy import ColumnElement, select

from engine_lib.model import AuditEntry
from engine_lib.services import listing
from engine_lib.spec import choice

SEVERITIES = ("info", "warning", "error")


def event_dict(entry: AuditEntry) -> dict:
    return {"id": entry.id, "time": entry.time.isoformat(), "severity": entry.severity,
            "entity_type": entry.entity_type, "entity_name": entry.entity_name,
            "message": entry.message, "user": entry.user_name, "token_id": entry.token_id}


class EventService:
    def __init__(self, engine):
        self.engine = engine

    def info(self, entity_type: str | None = None, entity_name: str | None = None,
             severity: str | None = None, after_id: int = 0, limit: int = 100,
             user: str | None = None) -> list[dict]:
        """Newest last; ``after_id`` lets a caller follow the log. ``user``: what one user
        did (an API user's name, "engine" for the engine loop, "local:<login>")."""
        with self.engine.store.transaction(commit=False) as session:
            query = select(AuditEntry).where(AuditEntry.id > after_id)
            if entity_type:
                query = query.where(AuditEntry.entity_type == entity_type)
            if entity_name:
                query = query.where(AuditEntry.entity_name == entity_name)
            if severity:
                query = query.where(AuditEntry.severity == severity)
            if user:
                query = query.where(AuditEntry.user_name == user)
            newest = list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)))
            return [event_dict(e) for e in reversed(newest)]

    def page(self, *, offset: int = 0, limit: int = listing.DEFAULT_LIMIT,
             entity_type: str | None = None, entity_name: str | None = None,
             severity: str | None = None, user: str | None = None, after_id: int = 0,
             name: str | None = None, status: str | None = None,
             visible: ColumnElement | None = None) -> dict:
        """One page of the audit log, newest first (services.listing). ``entity_name`` is
        exact or a glob, as a list's ``name``, which here is the entity's name too;
        ``after_id`` keeps only newer entries (following the log); ``visible`` narrows
        the rows. An entry has no status to filter on."""
        with self.engine.store.transaction(commit=False) as session:
            query = select(AuditEntry).where(AuditEntry.id > listing.whole(
                "after_id", after_id)).order_by(AuditEntry.id.desc())
            if entity_type is not None:
                query = query.where(AuditEntry.entity_type == listing.filter_text(
                    "entity_type", entity_type, 16))
            if severity is not None:
                query = query.where(AuditEntry.severity == choice("severity", severity,
                                                                  SEVERITIES))
            if user is not None:
                query = query.where(AuditEntry.user_name == listing.filter_text(
                    "user", user, 64))
            if entity_name is not None:
                query = query.where(listing.name_matches(session, AuditEntry.entity_name,
                                                         entity_name, "entity_name"))
            return listing.page(session, query, to_dict=event_dict, offset=offset,
                                limit=limit, name=name, name_column=AuditEntry.entity_name,
                                status=status, visible=visible)
