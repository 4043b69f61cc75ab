"""Where the engine finds an agent: its default port and the prefix of its API."""

from __future__ import annotations

AGENT_PORT = 54321
API_PREFIX = "/api/v1"
