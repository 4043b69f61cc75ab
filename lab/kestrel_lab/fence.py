"""The lab's fence agent: a power switch for namespace hosts, fence-agents style.

It speaks the interface real agents (``fence_ipmilan``, ``fence_apc`` ...)
speak, so the engine fences lab hosts exactly as it fences real ones:
``key=value`` lines on stdin, or ``-o ACTION -n PLUG`` on the command line;
``action`` is on, off, reboot or status; ``plug`` (alias ``port``) names the
lab host (h1, h2 ...), ``state_dir`` the lab. Exit codes: 0 success, 1
failure; for status 0 = on, 2 = off.

``off`` SIGKILLs every process of the host (its VMs' QEMU, libvirtd, the
agent, sshd; reap-aware); ``on`` starts its daemons and its boot script
(``/etc/kestrel/lab-boot start``, which starts the agent when installed).
"""

from __future__ import annotations

import argparse
import sys

from kestrel_lab import hosts
from kestrel_lab.errors import LabError

EXIT_OK, EXIT_FAILED = 0, 1
STATUS_ON, STATUS_OFF = 0, 2


def parse_stdin(text: str) -> dict[str, str]:
    """fence-agents' stdin format: one ``name=value`` per line, ``#`` comments."""
    options = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        options[key.strip()] = value.strip()
    return options


def fence(options: dict[str, str]) -> tuple[int, str]:
    """Carry out one action; (exit code, message)."""
    action = options.get("action") or options.get("option") or "reboot"
    host = options.get("plug") or options.get("port") or ""
    state_dir = options.get("state_dir") or hosts.DEFAULT_STATE_DIR
    if not host:
        return EXIT_FAILED, "plug (the lab host's name, e.g. h2) is required"
    try:
        if action == "status":
            on = hosts.powered_on(host, state_dir)
            return (STATUS_ON, "Status: ON") if on else (STATUS_OFF, "Status: OFF")
        if action in ("off", "reboot"):
            if hosts.powered_on(host, state_dir):
                hosts.power_off(host, state_dir)
        if action in ("on", "reboot"):
            hosts.power_on(host, state_dir)
        elif action != "off":
            return EXIT_FAILED, f"unknown action {action!r} (on, off, reboot, status)"
    except LabError as err:
        return EXIT_FAILED, err.message
    return EXIT_OK, "Success: " + ("Powered OFF" if action == "off" else "Powered ON")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fence_kestrel_lab", description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--action")
    parser.add_argument("-n", "--plug")
    parser.add_argument("--state-dir")
    args = parser.parse_args(argv)
    if args.action or args.plug:
        options = {"action": args.action or "reboot", "plug": args.plug or ""}
        if args.state_dir:
            options["state_dir"] = args.state_dir
    else:
        options = parse_stdin(sys.stdin.read())
    code, message = fence(options)
    print(message, file=sys.stderr if code not in (EXIT_OK, STATUS_OFF) else sys.stdout)
    return code


def boot_script(python: str) -> str:
    """``/etc/kestrel/lab-boot``: what an enabled kestrel-agent unit does on a real host.

    ``start`` starts the agent; ``restart`` (the lab's soft-fence command, as
    ``systemctl restart kestrel-agent`` is a real host's) kills a running one
    first, checking its command line so a reused PID is never hit.
    """
    return f"""#!/bin/sh
# kestrel lab host: the agent "unit" (start on boot, restart on a soft fence).
PIDFILE=/run/kestrel/agent.pid
case "$1" in
  start|restart)
    pid=$(cat "$PIDFILE" 2>/dev/null)
    if [ -n "$pid" ] && tr '\\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q engine_lib.agent
    then
      [ "$1" = start ] && exit 0  # already running
      kill -9 "$pid"
      while grep -qs '^State:[[:space:]]*[^Z]' "/proc/$pid/status"; do sleep 0.1; done
    fi
    mkdir -p /run/kestrel /var/log/kestrel
    exec '{python}' -m engine_lib.agent --config /etc/kestrel/agent.conf --daemon \\
      --pidfile "$PIDFILE" --log-file /var/log/kestrel/agent.log </dev/null >/dev/null 2>&1
    ;;
  *) echo "usage: $0 start|restart" >&2; exit 2 ;;
esac
"""


if __name__ == "__main__":
    sys.exit(main())
