"""The agent's configuration: one INI file, like vdsm.conf.

    [agent]            address, port, libvirt_uri, name
    [pki]              ca, cert, key
    [paths]            channels, payload, console, nvram   (roots of the placeholder kinds)
                       hooks                               (hook scripts, see agent.hooks)
    [storage_domains]  <name> = <mount point>

Every key has a default except the storage domains. Unknown sections and keys
are errors: the host role writes this file, and a typo silently ignored is a
VM that later fails to start for a reason nobody can see.
"""

from __future__ import annotations

import configparser
import socket
from dataclasses import dataclass, field

from engine_lib import placeholders
from engine_lib.errors import InvalidSpec

DEFAULT_PATH = "/etc/kestrel/agent.conf"
DEFAULT_PORT = 54321

_DEFAULTS: dict[str, dict[str, str]] = {
    "agent": {"address": "0.0.0.0", "port": str(DEFAULT_PORT),
              "libvirt_uri": "qemu:///system", "name": ""},
    "pki": {"ca": "/etc/kestrel/pki/ca.pem", "cert": "/etc/kestrel/pki/agent.pem",
            "key": "/etc/kestrel/pki/agent.key"},
    "paths": {"channels": "/var/lib/kestrel/channels", "payload": "/var/lib/kestrel/payload",
              "console": "/var/log/kestrel/console", "nvram": "/var/lib/kestrel/nvram",
              "hooks": "/etc/kestrel/hooks"},
}
_STORAGE = "storage_domains"


@dataclass(frozen=True)
class AgentConfig:
    name: str
    address: str
    port: int
    libvirt_uri: str
    ca: str
    cert: str
    key: str
    # Placeholder kind (channels, payload, console, nvram) -> host directory.
    paths: dict[str, str] = field(default_factory=dict)
    # Storage domain name -> mount point on this host.
    storage_domains: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def hooks_dir(self) -> str:
        return self.paths.get("hooks", _DEFAULTS["paths"]["hooks"])

    def resolve(self, value: str) -> str:
        """A placeholder path -> the real path on this host."""
        return placeholders.resolve(value, self.paths, self.storage_domains)


def load(path: str = DEFAULT_PATH) -> AgentConfig:
    """Read and validate the config file; InvalidSpec names file, section and key."""
    parser = _parser()
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise InvalidSpec(path, f"cannot read the agent config: {exc.strerror}") from None
    except configparser.Error as exc:
        raise InvalidSpec(path, f"not a valid INI file: {exc}") from None
    return parse(parser, path)


def loads(text: str, source: str = "<string>") -> AgentConfig:
    parser = _parser()
    try:
        parser.read_string(text, source)
    except configparser.Error as exc:
        raise InvalidSpec(source, f"not a valid INI file: {exc}") from None
    return parse(parser, source)


def _parser() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment]  # storage domain names keep their case
    return parser


def parse(parser: configparser.ConfigParser, source: str) -> AgentConfig:
    def where(section: str, key: str | None = None) -> str:
        return f"{source} [{section}]" + (f" {key}" if key else "")

    for section in parser.sections():
        if section not in _DEFAULTS and section != _STORAGE:
            raise InvalidSpec(where(section), "unknown section (expected one of "
                              f"{', '.join([*_DEFAULTS, _STORAGE])})")
    values: dict[str, dict[str, str]] = {}
    for section, defaults in _DEFAULTS.items():
        given = dict(parser.items(section)) if parser.has_section(section) else {}
        for key in given:
            if key not in defaults:
                raise InvalidSpec(where(section, key),
                                  f"unknown key (expected one of {', '.join(defaults)})")
        values[section] = {**defaults, **{k: v.strip() for k, v in given.items()}}

    agent = values["agent"]
    port_text = agent["port"]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidSpec(where("agent", "port"), f"'{port_text}' is not a TCP port number")
    for key in ("address", "libvirt_uri"):
        if not agent[key]:
            raise InvalidSpec(where("agent", key), "must not be empty")
    for section in ("pki", "paths"):
        for key, value in values[section].items():
            if not value.startswith("/"):
                raise InvalidSpec(where(section, key), f"'{value}' is not an absolute path")

    domains: dict[str, str] = {}
    if parser.has_section(_STORAGE):
        for name, mount in parser.items(_STORAGE):
            mount = mount.strip()
            if not name or "/" in name or name in (".", ".."):
                raise InvalidSpec(where(_STORAGE, name), "not a valid storage domain name")
            if not mount.startswith("/"):
                raise InvalidSpec(where(_STORAGE, name), f"'{mount}' is not an absolute path")
            domains[name] = mount.rstrip("/") or "/"

    return AgentConfig(
        name=agent["name"] or socket.gethostname(),
        address=agent["address"],
        port=int(port_text),
        libvirt_uri=agent["libvirt_uri"],
        ca=values["pki"]["ca"], cert=values["pki"]["cert"], key=values["pki"]["key"],
        paths=dict(values["paths"]),
        storage_domains=domains,
        source=source,
    )
