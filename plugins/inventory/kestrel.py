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
  - kestrel-engine (the engine library) on the controller; with O(engine_url)
    only its standard-library API client is used
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: The name of this plugin.
    required: true
    type: str
    choices: [kestrel.virt.kestrel]
  engine_url:
    description:
      - URL of the engine API, for example C(https://engine.example.com:8443).
        The VMs listed are those the user may read.
      - Mutually exclusive with O(engine_dir) and O(db_url).
    type: str
    env:
      - name: KESTREL_ENGINE_URL
  username:
    description: The engine user to log in as, with O(password).
    type: str
    env:
      - name: KESTREL_USERNAME
  password:
    description: The password of O(username).
    type: str
    env:
      - name: KESTREL_PASSWORD
  token:
    description: An API token, instead of O(username) and O(password).
    type: str
    env:
      - name: KESTREL_TOKEN
  ca_file:
    description:
      - The CA certificate that signed the engine API's certificate; if not
        set, the system's trusted CAs.
    type: path
    env:
      - name: KESTREL_CA_FILE
  engine_dir:
    description:
      - On the engine host only. The engine directory (CA, default SQLite database).
      - If not set, E(KESTREL_ENGINE_DIR), then C(/var/lib/kestrel/engine).
    type: path
    env:
      - name: KESTREL_ENGINE_DIR
  db_url:
    description:
      - On the engine host only. SQLAlchemy URL of the engine database.
      - If not set, E(KESTREL_DB_URL), then the SQLite file in O(engine_dir).
    type: str
    env:
      - name: KESTREL_DB_URL
  cluster:
    description: Only VMs of this cluster.
    type: str
"""

EXAMPLES = r"""
# kestrel.yml, through the engine API (the token from KESTREL_TOKEN)
plugin: kestrel.virt.kestrel
engine_url: https://engine.example.com:8443
ca_file: /etc/kestrel/engine-ca.pem
keyed_groups:
  - key: kestrel_custom_properties.role | default('none')
    prefix: role

# ansible-inventory -i kestrel.yml --graph
"""

import ipaddress
import re

from ansible.errors import AnsibleError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import (
    ENGINE_ARGUMENT_SPEC,
    ENGINE_IMPORT_ERROR,
    KestrelError,
    connection_problem,
    open_engine,
)

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
        options = dict((name, self.get_option(name)) for name in ENGINE_ARGUMENT_SPEC)
        problem = connection_problem(options)
        if problem is not None:
            raise AnsibleError("kestrel.virt.kestrel inventory: %s" % problem)
        try:
            with open_engine(options) as engine:
                vms = engine.vms.info(cluster=self.get_option("cluster"))
        except KestrelError as err:
            raise AnsibleError("kestrel engine: %s" % err.message) from None
        except ImportError as err:
            raise AnsibleError("the kestrel.virt.kestrel inventory with engine_dir/db_url needs "
                               "the kestrel-engine package with its engine dependencies: %s"
                               % err) from None
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
