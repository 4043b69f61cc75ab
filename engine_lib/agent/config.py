"""The agent's configuration: one INI file, like vdsm.conf.

    [agent]            address, port, libvirt_uri, name
    [pki]              ca, cert, key, crl          (the engine CA, this agent's certificate,
                                                    the CA's revocation list)
                       libvirt_crl, qemu_crl       (where libvirt and QEMU read that list)
    [paths]            channels, payload, console, nvram   (roots of the placeholder kinds)
                       hooks                               (hook scripts, see agent.hooks)
    [storage]          file_domain_roots   (where [storage_domains] may be, space-separated)
    [storage_domains]  <name> = <mount point>   (each under a file_domain_roots directory)
    [ballooning]       interval, low_free_percent, high_free_percent, step_percent
                       (the memory balloon policy, see agent.ballooning)
    [seal]             appliance | kernel + modules, tcg, timeout, cache_dir
                       (how virt-sysprep's appliance boots, see agent.seal)
    [images]           allow_private_urls   (false: image downloads never reach loopback,
                                             link-local, multicast addresses; true only
                                             for tests and the lab, see agent.url_fetch)
    [statistics]       cpu_accounting       (node: the machine's CPU times; cgroup: the
                                             agent's root cgroup's, where hosts share a
                                             machine, see agent.host_cpu)

Every key has a default except the storage domains. Unknown sections and keys
are errors: the host role writes this file, and a typo silently ignored is a
VM that later fails to start for a reason nobody can see.
"""

from __future__ import annotations

import configparser
import os
import socket
from dataclasses import dataclass, field

from engine_lib.protocol import placeholders
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.protocol.storage import DEFAULT_FILE_DOMAIN_ROOTS, check_roots, under_roots
from engine_lib.protocol.wire import AGENT_PORT

DEFAULT_PATH = "/etc/kestrel/agent.conf"

_DEFAULTS: dict[str, dict[str, str]] = {
    "agent": {"address": "0.0.0.0", "port": str(AGENT_PORT),
              "libvirt_uri": "qemu:///system", "name": ""},
    "pki": {"ca": "/etc/kestrel/pki/ca.pem", "cert": "/etc/kestrel/pki/agent.pem",
            "key": "/etc/kestrel/pki/agent.key", "crl": "/etc/kestrel/pki/crl.pem",
            "libvirt_crl": "/etc/pki/CA/cacrl.pem", "qemu_crl": "/etc/pki/qemu/ca-crl.pem"},
    "paths": {"channels": "/var/lib/kestrel/channels", "payload": "/var/lib/kestrel/payload",
              "console": "/var/log/kestrel/console", "nvram": "/var/lib/kestrel/nvram",
              "hooks": "/etc/kestrel/hooks"},
    # MoM's defaults: shrink under 20% free host memory, by 5% of a VM's memory per step.
    "ballooning": {"interval": "10", "low_free_percent": "20", "high_free_percent": "30",
                   "step_percent": "5"},
    "storage": {"file_domain_roots": " ".join(DEFAULT_FILE_DOMAIN_ROOTS)},
    # "" = libguestfs's own supermin appliance, built from the host's kernel.
    "seal": {"appliance": "", "kernel": "", "modules": "", "tcg": "no", "timeout": "1800",
             "cache_dir": "/var/cache/kestrel/guestfs"},
    "images": {"allow_private_urls": "false"},
    "statistics": {"cpu_accounting": "node"},
}
CPU_ACCOUNTING = ("node", "cgroup")
_STORAGE = "storage_domains"
_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}


def _boolean(text: str, field: str) -> bool:
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise InvalidSpec(field, f"'{text}' is not a boolean (yes or no)") from None


@dataclass(frozen=True)
class BallooningConfig:
    """When the balloon policy shrinks (free host memory under ``low_free_percent``) and
    grows back (over ``high_free_percent``) the balloons of VMs whose cluster allows it."""
    interval_s: float = 10.0
    low_free_percent: float = 20.0
    high_free_percent: float = 30.0
    # Of each VM's full memory, per interval.
    step_percent: float = 5.0


@dataclass(frozen=True)
class SealConfig:
    """How virt-sysprep boots its appliance (libguestfs runs a small VM).

    ``appliance``: a fixed appliance directory (kernel, initrd, root, README.fixed;
    LIBGUESTFS_PATH; the only way where /lib/modules is missing, e.g. a container), or
    ``kernel`` + ``modules`` (a kernel and its module directory, e.g. unpacked from a
    distribution kernel package) for supermin's appliance when the host's own kernel
    is unusable, or neither (the host's kernel). ``tcg``: boot the appliance without
    KVM (where /dev/kvm is missing or unusable).
    """
    appliance: str = ""
    kernel: str = ""
    modules: str = ""
    tcg: bool = False
    timeout_s: float = 1800.0
    cache_dir: str = "/var/cache/kestrel/guestfs"


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
    # Where configured (file) storage domains may be; NFS domains mount under MOUNT_ROOT.
    file_domain_roots: tuple[str, ...] = DEFAULT_FILE_DOMAIN_ROOTS
    source: str = ""
    ballooning: BallooningConfig = field(default_factory=BallooningConfig)
    seal: SealConfig = field(default_factory=SealConfig)
    # The engine CA's revocation list ("" = none), and libvirt's and QEMU's copies.
    crl: str = ""
    libvirt_crl: str = ""
    qemu_crl: str = ""
    # Image imports may download from loopback/link-local addresses (tests and the lab only).
    allow_private_urls: bool = False
    # Where the host's CPU use comes from: "node" or "cgroup" (see agent.host_cpu).
    cpu_accounting: str = "node"

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

    roots = check_roots(where("storage", "file_domain_roots"),
                        values["storage"]["file_domain_roots"].split())
    domains: dict[str, str] = {}
    if parser.has_section(_STORAGE):
        for name, mount in parser.items(_STORAGE):
            mount = mount.strip()
            if not name or "/" in name or name in (".", ".."):
                raise InvalidSpec(where(_STORAGE, name), "not a valid storage domain name")
            domains[name] = _domain_directory(where(_STORAGE, name), mount, roots)

    private = _boolean(values["images"]["allow_private_urls"],
                       where("images", "allow_private_urls"))
    accounting = values["statistics"]["cpu_accounting"]
    if accounting not in CPU_ACCOUNTING:
        raise InvalidSpec(where("statistics", "cpu_accounting"),
                          f"'{accounting}' is not one of {', '.join(CPU_ACCOUNTING)}")

    return AgentConfig(
        name=agent["name"] or socket.gethostname(),
        address=agent["address"],
        port=int(port_text),
        libvirt_uri=agent["libvirt_uri"],
        ca=values["pki"]["ca"], cert=values["pki"]["cert"], key=values["pki"]["key"],
        crl=values["pki"]["crl"], libvirt_crl=values["pki"]["libvirt_crl"],
        qemu_crl=values["pki"]["qemu_crl"],
        paths=dict(values["paths"]),
        storage_domains=domains,
        file_domain_roots=roots,
        source=source,
        ballooning=_ballooning(values["ballooning"], lambda key: where("ballooning", key)),
        seal=_seal(values["seal"], lambda key: where("seal", key)),
        allow_private_urls=private,
        cpu_accounting=accounting,
    )


def _domain_directory(field: str, mount: str, roots: tuple[str, ...]) -> str:
    """A configured domain's directory: under an allowed root, also once links are resolved
    (a link there to /etc is as much outside as /etc)."""
    mount = under_roots(field, mount, roots)
    real_roots = tuple(os.path.realpath(root) for root in roots)
    under_roots(field, os.path.realpath(mount), real_roots)
    return mount


def _ballooning(values: dict[str, str], where) -> BallooningConfig:
    def number(key: str, low: float, high: float) -> float:
        try:
            value = float(values[key])
        except ValueError:
            value = float("nan")
        if not low <= value <= high:  # NaN fails too
            raise InvalidSpec(where(key), f"'{values[key]}' is not a number from {low:g} "
                                          f"to {high:g}")
        return value

    interval = number("interval", 0.1, 3600)
    low = number("low_free_percent", 0, 100)
    high = number("high_free_percent", 0, 100)
    if high < low:
        raise InvalidSpec(where("high_free_percent"), f"{high:g} is below low_free_percent "
                                                      f"({low:g}); the balloons would flap")
    return BallooningConfig(interval_s=interval, low_free_percent=low, high_free_percent=high,
                            step_percent=number("step_percent", 0.1, 100))


def _seal(values: dict[str, str], where) -> SealConfig:
    for key in ("appliance", "kernel", "modules", "cache_dir"):
        if values[key] and not values[key].startswith("/"):
            raise InvalidSpec(where(key), f"'{values[key]}' is not an absolute path")
    if not values["cache_dir"]:
        raise InvalidSpec(where("cache_dir"), "must not be empty")
    if bool(values["kernel"]) != bool(values["modules"]):
        raise InvalidSpec(where("kernel" if values["modules"] else "modules"),
                          "kernel and modules go together (a kernel and its module directory)")
    if values["appliance"] and values["kernel"]:
        raise InvalidSpec(where("appliance"), "a fixed appliance brings its own kernel; "
                                              "set appliance or kernel + modules, not both")
    tcg = _boolean(values["tcg"], where("tcg"))
    try:
        timeout = float(values["timeout"])
    except ValueError:
        timeout = float("nan")
    if not 10 <= timeout <= 86400:  # NaN fails too
        raise InvalidSpec(where("timeout"), f"'{values['timeout']}' is not a number of "
                                            "seconds from 10 to 86400")
    return SealConfig(appliance=values["appliance"], kernel=values["kernel"],
                      modules=values["modules"], tcg=tcg, timeout_s=timeout,
                      cache_dir=values["cache_dir"])
