"""What the services return: one result type for every mutating call.

Its own module, low in the services layer, so that every service and the engine
facade may import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Outcome:
    """Whether anything changed, the resulting entity, and a before/after diff."""

    changed: bool
    entity: dict | None
    diff: dict | None = None
