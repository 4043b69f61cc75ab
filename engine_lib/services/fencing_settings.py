"""What a cluster's fencing policy and a host's power management may hold, checked.

The host and cluster services validate these when a user sets them, and the engine
loop's fencing (engine_lib.loop.fencing) acts on them; both import them from here,
so the services never import the loop.

A power management names its fence agent (``fence_ipmilan``, as oVirt maps a
power management ``type``); the engine finds the executable itself, in the
system's directory or the administrator's list (EngineConfig.fence_agents):
fence agents run as root on the engine host, next to the CA key, so a request
never chooses what runs.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, fields

from engine_lib.config import EngineConfig
from engine_lib.protocol.errors import InvalidSpec

_OPTION_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# Where fence-agents installs its agents, each named fence_<device>.
FENCE_AGENT_DIR = "/usr/sbin"
_AGENT_NAME = re.compile(r"fence_[A-Za-z0-9_]{1,64}")
# The policy's durations, at most: one fencing step must not hold the loop for hours.
_MAX_SECONDS = {"soft_fence_grace_s": 3600.0, "ssh_timeout_s": 300.0, "power_timeout_s": 600.0}


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
        elif key == "connectivity_threshold_percent":
            if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 100:
                raise InvalidSpec(f"{field}.{key}", f"must be a whole number from 1 to 100 "
                                  f"(got {_shown(raw)})")
        elif isinstance(raw, bool) or not isinstance(raw, (int, float)) \
                or not (0 < raw <= _MAX_SECONDS[key]):  # NaN compares false
            raise InvalidSpec(f"{field}.{key}", f"must be a number of seconds above 0 and at "
                              f"most {_MAX_SECONDS[key]:.0f} (got {_shown(raw)})")
        result[key] = type(default)(raw)
    return result


def _shown(value) -> str:
    """A value for an error message; an int of thousands of digits has no repr."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 18:
        return "a number of more than 18 digits"
    return repr(value)[:80]


def fence_agent_path(field: str, name, config: EngineConfig) -> str:
    """The executable a fence agent's name stands for: the administrator's listed one of
    that name, else FENCE_AGENT_DIR/name; a clear error naming ``field`` otherwise."""
    system_dir = FENCE_AGENT_DIR
    if not isinstance(name, str) or not _AGENT_NAME.fullmatch(name):
        raise InvalidSpec(field, f"must name a fence agent, fence_ and letters, digits or '_' "
                          f"(such as fence_ipmilan), not a path (got {_shown(name)})")
    listed = {os.path.basename(path): path for path in config.fence_agents()
              if os.path.isabs(path)}
    path = listed.get(name) or os.path.join(system_dir, name)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise InvalidSpec(field, f"no fence agent {name!r}: {system_dir}/{name} is not an "
                          f"executable file and {config.fence_agents_file} lists none by "
                          "that name")
    return path


def normalize_power_management(field: str, value, config: EngineConfig) -> dict:
    """{} (no power fencing) or {"agent": fence agent name, "options": {key: text}}.

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
    fence_agent_path(f"{field}.agent", agent, config)
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
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)) \
                or (isinstance(raw, float) and not math.isfinite(raw)) \
                or (isinstance(raw, int) and abs(raw) >= 10 ** 18):
            raise InvalidSpec(f"{field}.options.{key}", f"must be text or a finite number "
                              f"(got {_shown(raw)})")
        text = str(raw)
        if "\n" in text or "\r" in text:
            raise InvalidSpec(f"{field}.options.{key}", "must not contain a line break")
        clean[key] = text
    return {"agent": agent, "options": clean}
