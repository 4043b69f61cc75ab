#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: storage_domain
short_description: Manage kestrel storage domains and attach them to clusters
version_added: 0.1.0
description:
  - A storage domain holds VM disk volumes. It is a directory (O(type=file)) or
    an NFS export (O(type=nfs)) that every host of its clusters holds at
    O(path).
  - The engine never puts host paths into a VM's domain XML; each host's agent
    maps the domain's name to its directory (the C(kestrel.virt.host) role's
    C(kestrel_host_storage_domains)). This module records the domain and its
    clusters; the returned C(hosts) shows per host whether its agent has the domain.
  - For O(type=nfs) the engine mounts the export on the hosts itself (like oVirt's
    C(connectStorageServer)) - on each Up host of a cluster the domain gets attached
    to, whenever a host of an attached cluster comes Up (added, activated, or back
    after being unreachable), and it unmounts on detach and removal. A host that
    cannot mount it shows C(available=false) with mount's error in C(hosts), and the
    engine's events say why. Check mode mounts nothing.
  - Once any storage domain is attached to a cluster, new VM disks in that
    cluster must name one of the attached domains. A cluster with none
    attached accepts any name its hosts know (the older rule).
  - Options left unset keep their current value.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Name of the storage domain (what VM disks name as their C(storage_domain)).
    type: str
    required: true
  state:
    description:
      - Whether the domain exists. A domain that still holds VM disks cannot be removed.
    type: str
    choices: [present, absent]
    default: present
  type:
    description: V(file) for a directory, V(nfs) for an NFS export. Fixed once created.
    type: str
    choices: [file, nfs]
  path:
    description:
      - The directory the hosts hold the domain at. Required to create a V(file) domain,
        which must be in (or be) a directory the engine's administrator allowed
        (C(file_domain_roots) in the engine directory's C(engine.conf), the C(kestrel.virt.engine)
        role's C(kestrel_engine_file_domain_roots); default C(/var/lib/kestrel/storage)).
      - For V(nfs), the mount point, a directory directly under C(/var/lib/kestrel/mnt);
        default C(/var/lib/kestrel/mnt/<name>). Hosts mount it C(nosuid,nodev,noexec).
    type: path
  export:
    description: The NFS export, C(server:/path). Required for V(nfs).
    type: str
  clusters:
    description:
      - The clusters the domain is attached to, all of them (an empty list detaches it
        from every cluster). A cluster whose VMs have disks on the domain cannot be detached.
    type: list
    elements: str
  description:
    description: Free text.
    type: str
extends_documentation_fragment:
  - kestrel.virt.engine
  - kestrel.virt.engine.attributes
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: A local directory domain for the lab cluster (under the engine's file_domain_roots)
  kestrel.virt.storage_domain:
    name: data
    path: /var/lib/kestrel/storage/data
    clusters: [lab]

- name: An NFS domain shared by two clusters
  kestrel.virt.storage_domain:
    name: shared
    type: nfs
    export: nas.example.com:/exports/kestrel
    clusters: [production, staging]  # mounted at /var/lib/kestrel/mnt/shared

- name: Which hosts have it (options left unset change nothing)
  kestrel.virt.storage_domain:
    name: shared
  register: shared

- name: Show them
  ansible.builtin.debug:
    var: shared.storage_domain.hosts
"""

RETURN = r"""
storage_domain:
  description: The domain after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    name:
      description: Name of the domain.
      type: str
      sample: data
    type:
      description: V(file) or V(nfs).
      type: str
      sample: file
    path:
      description: Directory on the hosts.
      type: str
      sample: /srv/kestrel/data
    export:
      description: NFS export, null for a file domain.
      type: str
      sample: nas.example.com:/exports/kestrel
    clusters:
      description: Clusters the domain is attached to, sorted.
      type: list
      elements: str
      sample: [lab]
    description:
      description: Free text.
      type: str
      sample: ""
    hosts:
      description:
        - Per host of the attached clusters, what its agent last reported for the
          domain - C(available) (true, false, or null when not reported yet),
          C(path), C(free_mib), C(total_mib), or a C(reason) or C(error).
      type: dict
      sample: {h1: {available: true, path: /srv/kestrel/data, free_mib: 20480, total_mib: 51200}}
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            type=dict(type='str', choices=['file', 'nfs']),
            path=dict(type='path'),
            export=dict(type='str'),
            clusters=dict(type='list', elements='str'),
            description=dict(type='str'),
        ),
        entity_key='storage_domain',
    )
    p = module.params
    if p['state'] == 'absent':
        module.apply(lambda engine, check_mode: engine.storage_domains.remove(
            p['name'], check_mode=check_mode))
    else:
        module.apply(lambda engine, check_mode: engine.storage_domains.ensure(
            p['name'], type=p['type'], path=p['path'], export=p['export'], clusters=p['clusters'],
            description=p['description'], check_mode=check_mode))


if __name__ == '__main__':
    main()
