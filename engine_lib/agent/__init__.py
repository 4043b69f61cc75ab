"""The kestrel host agent: one per hypervisor, the engine's hands on the host.

Receives engine-rendered domain XML over HTTPS (mutual TLS), resolves the
host placeholders, prepares volumes and directories, and drives libvirt.

Runs on hosts that install the wheel with ``--no-deps``: this package imports
only the standard library, libvirt-python, and engine_lib's stdlib-only shared
modules (errors, placeholders, metadata). Never the store, Jinja2, YAML or
cryptography.
"""

from __future__ import annotations


def main(config_path: str = "/etc/kestrel/agent.conf", daemon: bool = False,
         pidfile: str | None = None, log_file: str | None = None) -> int:
    """Run the agent (see engine_lib.agent.daemon.main); imported lazily so that
    importing the package does not need libvirt."""
    from engine_lib.agent.daemon import main as run

    return run(config_path, detach=daemon, pidfile=pidfile, log_file=log_file)
