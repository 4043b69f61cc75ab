"""The kestrel host agent: one per hypervisor, the engine's hands on the host.

Receives engine-rendered domain XML over HTTPS (mutual TLS), resolves the
host placeholders, prepares volumes and directories, and drives libvirt.

Runs on hosts that install the wheel with ``--no-deps``: this package imports
only the standard library, libvirt-python, engine_lib.protocol (the vocabulary
it shares with the engine) and ``engine_lib.__version__``. Never the store,
Jinja2, YAML or cryptography (tests/lib/agent/test_agent_imports.py checks it).
"""

from __future__ import annotations


def main(config_path: str = "/etc/kestrel/agent.conf", daemon: bool = False,
         pidfile: str | None = None, log_file: str | None = None) -> int:
    """Run the agent (see engine_lib.agent.daemon.main).

    Imported late on purpose: importing any agent module imports this package
    first, and it must not pull the HTTP server and TLS setup along."""
    from engine_lib.agent.daemon import main as run  # late: keeps the package light

    return run(config_path, detach=daemon, pidfile=pidfile, log_file=log_file)
