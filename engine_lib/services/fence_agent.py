"""Running a host's fence agent: switch its power on or off, and ask.

Fence agents speak the fence-agents interface (ClusterLabs FenceAgentAPI):
``key=value`` lines on stdin (``action=on|off|reboot|status`` plus the host's
configured options such as ``ip``, ``username``, ``plug``), exit code 0 for
success and 1 for failure; for ``status``, 0 means on and 2 means off. The
executable is found again by its name on every call (fencing_settings), never
at a path stored with the host.

Both the engine loop's fencing (engine_lib.loop.fencing) and power saving
(services.power_saving) switch hosts through these.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

from engine_lib.services.fencing_settings import fence_agent_path

# fence-agents exit codes (FenceAgentAPI).
EXIT_OK = 0
STATUS_ON, STATUS_OFF = 0, 2
ACTIONS = ("on", "off", "reboot", "status")


@dataclass(frozen=True)
class Result:
    ok: bool
    detail: str


def resolved(power_management: dict, config) -> dict:
    """The power management with its agent's executable in place of its name."""
    return {**power_management, "agent": fence_agent_path(
        "power_management.agent", power_management.get("agent"), config)}


def run_fence_agent(power_management: dict, action: str, timeout: float) -> tuple[int, str]:
    """Run the host's fence agent (``resolved``) once; (exit code, its output) — -1 when it
    could not run."""
    if action not in ACTIONS:
        raise ValueError(f"fence action {action!r} not in {ACTIONS}")
    if not os.path.isabs(power_management["agent"]):
        raise ValueError(f"fence agent {power_management['agent']!r} was not resolved")
    lines = [f"action={action}"] + [f"{k}={v}" for k, v in power_management["options"].items()]
    try:
        done = subprocess.run([power_management["agent"]], input="\n".join(lines) + "\n",
                              capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return -1, str(err)
    return done.returncode, (done.stderr or done.stdout or "").strip()[-500:]


def power_off(power_management: dict, timeout: float, poll_s: float = 0.5) -> Result:
    """``off``, then ``status`` until the agent says off: only that is proof."""
    agent = os.path.basename(power_management["agent"])
    deadline = time.monotonic() + timeout
    code, output = run_fence_agent(power_management, "off", timeout)
    if code != EXIT_OK:
        return Result(False, f"{agent} off failed (exit {code}): {output}")
    while True:
        code, output = run_fence_agent(power_management, "status",
                                       max(1.0, deadline - time.monotonic()))
        if code == STATUS_OFF:
            return Result(True, f"power off confirmed by {agent} status")
        if time.monotonic() > deadline:
            return Result(False, f"{agent} status did not say off within {timeout:.0f}s "
                          f"(last exit {code}: {output})")
        time.sleep(poll_s)


def power_on(power_management: dict, timeout: float) -> Result:
    code, output = run_fence_agent(power_management, "on", timeout)
    agent = os.path.basename(power_management["agent"])
    return Result(code == EXIT_OK, f"{agent} on: exit {code}{': ' + output if output else ''}")


