# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: kestrel
short_description: VMs of the kestrel engine as an inventory
version_added: 0.1.0
description:
  - Every VM the engine knows becomes an inventory host, grouped by cluster
    (C(cluster_<name>)), by the hypervisor it runs on (C(host_<name>)), by
    status (C(status_up), C(status_down), ...) and by each of its tags
    (C(tag_<tag>), from the VM's C(tags)).
  - Each VM carries C(kestrel_id), C(kestrel_cluster), C(kestrel_host),
    C(kestrel_status), C(kestrel_memory_mib), C(kestrel_vcpus), C(kestrel_tags),
    C(kestrel_nics) (names, networks and MAC addresses) and C(kestrel_guest)
    (what the guest agent reports - IP addresses, host name, OS).
  - C(ansible_host) is the guest's first IPv4 address that is neither loopback
    nor link-local, else its first such IPv6 address, when the guest agent
    reports one; O(compose) can set it from other facts.
  - The file must end in C(kestrel.yml) or C(kestrel.yaml).
author:
  - kestrel.virt maintainers (@kestrel-virt)
requirements:
  - kestrel-engine (the engine library) on the controller
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: The name of this plugin.
    required: true
    type: str
    choices: [kestrel.virt.kestrel]
  engine_dir:
    description:
      - The engine directory (CA, default SQLite database).
      - If not set, E(KESTREL_ENGINE_DIR), then C(/var/lib/kestrel/engine).
    type: path
    env:
      - name: KESTREL_ENGINE_DIR
  db_url:
    description:
      - SQLAlchemy URL of the engine database.
      - If not set, E(KESTREL_DB_URL), then the SQLite file in O(engine_dir).
    type: str
    env:
      - name: KESTREL_DB_URL
  cluster:
    description: Only VMs of this cluster.
    type: str
"""

EXAMPLES = r"""
# kestrel.yml
plugin: kestrel.virt.kestrel
engine_dir: /var/lib/kestrel/engine
keyed_groups:
  - key: kestrel_custom_properties.role | default('none')
    prefix: role

# ansible-inventory -i kestrel.yml --graph
"""

import ipaddress
import re

from ansible.errors import AnsibleError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

try:
    from engine_lib.engine import Engine
    from engine_lib.protocol.errors import KestrelError
except ImportError as import_error:
    ENGINE_IMPORT_ERROR = import_error
else:
    ENGINE_IMPORT_ERROR = None

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def group_name(prefix, value):
    """Ansible group names: letters, digits and underscores."""
    return "%s_%s" % (prefix, _UNSAFE.sub("_", str(value)).lower())


def _usable(address):
    try:
        ip = ipaddress.ip_address(str(address).split("/", maxsplit=1)[0].split("%", maxsplit=1)[0])
    except ValueError:
        return None
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return None
    return ip


def first_ip(vm):
    """The address Ansible should reach the guest at: IPv4 first, then IPv6."""
    guest = vm.get("guest") or vm.get("guest_info") or {}
    usable = [ip for ip in (_usable(a) for a in guest.get("ips") or []) if ip is not None]
    for version in (4, 6):
        for ip in usable:
            if ip.version == version:
                return str(ip)
    return None


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "kestrel.virt.kestrel"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("kestrel.yml", "kestrel.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        if ENGINE_IMPORT_ERROR is not None:
            raise AnsibleError("the kestrel.virt.kestrel inventory needs the kestrel-engine "
                               "Python package: %s" % ENGINE_IMPORT_ERROR)
        try:
            with Engine.open(engine_dir=self.get_option("engine_dir"),
                             db_url=self.get_option("db_url")) as engine:
                vms = engine.vms.info(cluster=self.get_option("cluster"))
        except KestrelError as err:
            raise AnsibleError("kestrel engine: %s" % err.message) from None
        for vm in vms:
            self._add_vm(vm)

    def _add_vm(self, vm):
        name = self.inventory.add_host(vm["name"])
        facts = {
            "kestrel_id": vm["id"],
            "kestrel_cluster": vm["cluster"],
            "kestrel_host": vm["host"],
            "kestrel_status": vm["status"],
            "kestrel_memory_mib": vm["memory_mib"],
            "kestrel_vcpus": vm["vcpus"],
            "kestrel_custom_properties": vm["custom_properties"],
            "kestrel_tags": list(vm.get("tags") or []),
            "kestrel_guest": vm.get("guest") or {},
            "kestrel_nics": [{"name": n["name"], "network": n.get("network"), "mac": n.get("mac")}
                             for n in vm["nics"]],
        }
        address = first_ip(vm)
        if address:
            facts["ansible_host"] = address
        for key, value in facts.items():
            self.inventory.set_variable(name, key, value)
        groups = [group_name("cluster", vm["cluster"]), group_name("status", vm["status"])]
        if vm["host"]:
            groups.append(group_name("host", vm["host"]))
        groups += [group_name("tag", tag) for tag in vm.get("tags") or []]
        for group in groups:
            self.inventory.add_group(group)
            self.inventory.add_child(group, name)
        strict = self.get_option("strict")
        self._set_composite_vars(self.get_option("compose"), facts, name, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), facts, name, strict=strict)
        self._add_host_to_keyed_groups(self.get_option("keyed_groups"), facts, name, strict=strict)
