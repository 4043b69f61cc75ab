"""What a cluster's fencing policy and a host's power management may hold, checked.

The host and cluster services validate these when a user sets them, and the engine
loop's fencing (engine_lib.loop.fencing) acts on them; both import them from here,
so the services never import the loop.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, fields

from engine_lib.protocol.errors import InvalidSpec

_OPTION_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class FencingPolicy:
    """A cluster's fencing policy; a cluster stores only what differs from these."""

    enabled: bool = True
    skip_if_connectivity_broken: bool = True
    connectivity_threshold_percent: int = 50
    # How long a soft-fenced host's agent has to answer before the power fence.
    soft_fence_grace_s: float = 30.0
    ssh_timeout_s: float = 10.0
    # How long the power agent may take to confirm "off"; one call's timeout too.
    power_timeout_s: float = 60.0
    power_on_after_fence: bool = True

    @classmethod
    def of(cls, stored: dict | None) -> FencingPolicy:
        return cls(**normalize_policy("fencing_policy", stored or {}))


def normalize_policy(field: str, value) -> dict:
    """The policy's full set of fields from a partial mapping, each checked."""
    if not isinstance(value, dict):
        raise InvalidSpec(field, f"must be a mapping (got {type(value).__name__})")
    known = {f.name: f for f in fields(FencingPolicy)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise InvalidSpec(f"{field}.{unknown[0]}", f"is not a fencing policy option; known: "
                          f"{', '.join(known)}")
    result = asdict(FencingPolicy())
    for key, raw in value.items():
        default = result[key]
        if isinstance(default, bool):
            if not isinstance(raw, bool):
                raise InvalidSpec(f"{field}.{key}", f"must be true or false (got {raw!r})")
        elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise InvalidSpec(f"{field}.{key}", f"must be a number (got {raw!r})")
        elif key == "connectivity_threshold_percent" and not 1 <= raw <= 100:
            raise InvalidSpec(f"{field}.{key}", f"must be between 1 and 100 (got {raw})")
        elif raw <= 0:
            raise InvalidSpec(f"{field}.{key}", f"must be positive (got {raw})")
        result[key] = type(default)(raw)
    return result


def normalize_power_management(field: str, value) -> dict:
    """{} (no power fencing) or {"agent": absolute path, "options": {key: text}}.

    Options become ``key=value`` lines on the agent's stdin: a newline in a key
    or value would smuggle in another option (or another action), so neither may
    hold one, and ``action`` is the engine's to set.
    """
    if value is None or value == {}:
        return {}
    if not isinstance(value, dict):
        raise InvalidSpec(field, f"must be a mapping (got {type(value).__name__})")
    unknown = sorted(set(value) - {"agent", "options"})
    if unknown:
        raise InvalidSpec(f"{field}.{unknown[0]}", "is not a power management option; "
                          "known: agent, options")
    agent = value.get("agent")
    if not isinstance(agent, str) or not os.path.isabs(agent) or "\n" in agent:
        raise InvalidSpec(f"{field}.agent", f"must be the absolute path of a fence agent "
                          f"(got {agent!r})")
    options = value.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidSpec(f"{field}.options", "must be a mapping of option names to values")
    clean = {}
    for key, raw in options.items():
        if not isinstance(key, str) or not _OPTION_KEY.match(key):
            raise InvalidSpec(f"{field}.options", f"option name {key!r} must be letters, digits, "
                              "'_' or '-', starting with a letter")
        if key == "action":
            raise InvalidSpec(f"{field}.options.action", "is set by the engine for each call")
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise InvalidSpec(f"{field}.options.{key}", f"must be text or a number (got {raw!r})")
        text = str(raw)
        if "\n" in text or "\r" in text:
            raise InvalidSpec(f"{field}.options.{key}", "must not contain a line break")
        clean[key] = text
    return {"agent": agent, "options": clean}
