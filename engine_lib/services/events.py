"""The audit log, as users read it: what happened to which entity, and when."""

from __future__ import annotations

from sqlalchemy import select

from engine_lib.model import AuditEntry


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
