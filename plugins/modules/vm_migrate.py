#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_migrate
short_description: Move a running kestrel VM live to another host
version_added: 0.1.0
description:
  - Migrates a running VM, without stopping it, to a host the engine's scheduler
    picks (the host it runs on is excluded; its placement and affinity rules
    hold) or to the host named in O(host).
  - The destination host's agent prepares the VM in incoming mode; the source
    host's agent drives a peer-to-peer migration between the two libvirt daemons
    and reports its progress, which the engine records.
  - The task waits for the result. A migration that fails leaves the VM running
    on its source host, as its only copy, and the task fails saying why.
  - Every run moves the VM, so it always reports a change; check mode reports
    where the VM would go without moving it.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Name of the VM; it must be running (status V(Up)).
    type: str
    required: true
  host:
    description:
      - Host to move the VM to, in the VM's cluster. It must pass the
        scheduler's filters (memory, networks, pinning, affinity, ...).
      - Unset, the scheduler picks the host.
    type: str
  policy:
    description:
      - The convergence policy, as oVirt's. Unset, the cluster's policy.
      - V(minimal_downtime) allows 100 ms of downtime and steps up to 150,
        200, 300, 400 and 500 ms when copying stalls, then gives up.
      - V(suspend_workload) adds a last step of 5,000 ms.
      - V(post_copy) switches to post-copy after two stalled iterations.
    type: str
    choices: [minimal_downtime, post_copy, suspend_workload]
  bandwidth:
    description:
      - Bandwidth limit of this migration in Mbps; V(0) for none.
      - Unset, the cluster's limit.
    type: int
  timeout:
    description: Seconds to wait for the migration; after that it is cancelled.
    type: int
    default: 600
extends_documentation_fragment:
  - kestrel.virt.engine
  - kestrel.virt.engine.attributes
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - Between hosts the libvirt daemons connect to each other directly, over
    C(qemu+tcp://<host address>/system), or over C(qemu+tls://<host address>/system)
    (port 16514, with QEMU's migration stream in TLS too) when the cluster sets
    O(kestrel.virt.cluster#module:migration_encrypted); the destination's libvirtd must listen there.
"""

EXAMPLES = r"""
- name: Move vm1 to wherever the scheduler says
  kestrel.virt.vm_migrate:
    name: vm1

- name: Move vm1 to h2, at most 500 Mbps, allowing post-copy
  kestrel.virt.vm_migrate:
    name: vm1
    host: h2
    bandwidth: 500
    policy: post_copy
  register: moved

- name: Show the downtime
  ansible.builtin.debug:
    msg: "{{ moved.migration.destination }} in {{ moved.migration.duration_s }} s, downtime {{ moved.migration.downtime_ms }} ms"
"""

RETURN = r"""
migration:
  description: The migration attempt as the engine recorded it.
  returned: always
  type: dict
  contains:
    vm:
      description: Name of the VM.
      type: str
    source:
      description: Host the VM ran on.
      type: str
      sample: h1
    destination:
      description: Host the VM runs on now (or would, in check mode).
      type: str
      sample: h2
    status:
      description: V(succeeded), or V(cancelled) if someone cancelled it meanwhile.
      type: str
      sample: succeeded
    downtime_ms:
      description: The downtime libvirt measured at switchover; null in check mode.
      type: int
      sample: 118
    policy_limit_ms:
      description: The most downtime the policy allows.
      type: int
      sample: 500
    duration_s:
      description: Seconds from start to the VM running on the destination.
      type: float
      sample: 2.9
    policy:
      description: The convergence policy used.
      type: str
      sample: minimal_downtime
    encrypted:
      description: Whether it went over libvirt TLS (the cluster's O(kestrel.virt.cluster#module:migration_encrypted)).
      type: bool
      sample: false
    progress:
      description:
        - The source's last progress sample (data processed, remaining and
          total in MiB, memory iteration, downtime limit in ms).
      type: dict
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            host=dict(type='str'),
            policy=dict(type='str', choices=['minimal_downtime', 'post_copy', 'suspend_workload']),
            bandwidth=dict(type='int'),
            timeout=dict(type='int', default=600),
        ),
        entity_key='migration',
    )
    p = module.params
    module.apply(lambda engine, check_mode: engine.migrations.migrate(
        p['name'], host=p['host'], policy=p['policy'], bandwidth_mbps=p['bandwidth'],
        timeout=p['timeout'], check_mode=check_mode))


if __name__ == '__main__':
    main()
