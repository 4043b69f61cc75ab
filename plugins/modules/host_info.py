#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: host_info
short_description: Read hosts from the kestrel engine
version_added: 0.1.0
description:
  - List hosts with their status and the facts their agents report - CPUs,
    memory, libvirt version, bridges (logical networks), machine types, hooks,
    the storage domains the agent serves, and the agent version the engine installed.
  - Each host's current figures (CPU, memory, load, network and disk rates) are in
    C(statistics); M(kestrel.virt.stats_info) has their history.
  - Filters combine; without any, every host is returned.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Only the host with this name.
    type: str
  cluster:
    description: Only hosts of this cluster (which must exist).
    type: str
extends_documentation_fragment:
  - kestrel.virt.engine
  - kestrel.virt.engine.attributes
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: N/A
"""

EXAMPLES = r"""
- name: Which hosts of production are Up?
  kestrel.virt.host_info:
    cluster: production
  register: result

- name: Show them
  ansible.builtin.debug:
    msg: "{{ result.hosts | selectattr('status', 'equalto', 'Up') | map(attribute='name') | list }}"
"""

RETURN = r"""
hosts:
  description: The hosts that match, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name of the host.
      type: str
      sample: h1
    cluster:
      description: Cluster of the host.
      type: str
      sample: production
    address:
      description: Address the engine reaches the agent at.
      type: str
      sample: 10.77.0.1
    status:
      description: V(Up), V(Connecting), V(NonResponsive), V(PreparingForMaintenance),
        V(Maintenance), V(Installing), V(InstallFailed).
      type: str
      sample: Up
    cpus:
      description: Logical CPUs.
      type: int
      sample: 2
    memory_mib:
      description: Memory in MiB.
      type: int
      sample: 24000
    networks:
      description: Bridges the agent reports (logical networks); null when not reported.
      type: list
      elements: str
      sample: [kestrelmgmt]
    machines:
      description: QEMU machine types; null when not reported.
      type: list
      elements: str
      sample: [pc, q35]
    last_seen:
      description: When the agent last answered (ISO 8601).
      type: str
      sample: "2026-11-21T16:05:12+00:00"
    storage_domains:
      description:
        - The storage domains the host's agent serves, as it last reported them; null
          when not reported.
        - C(available) is false (with C(error)) when the domain's directory cannot be read.
      type: list
      elements: dict
      sample:
        - {name: data, path: /srv/kestrel-lab/shared/data, available: true, total_mib: 40960, free_mib: 12000}
    agent_version:
      description:
        - Agent version the engine last installed (M(kestrel.virt.host) with
          O(kestrel.virt.host#module:state=reinstalled));
          empty when the engine never reinstalled the host.
      type: str
      sample: 0.1.0
    agent_wheel_sha256:
      description: SHA-256 of that agent wheel; empty when never reinstalled.
      type: str
    agent_installed_at:
      description: When the engine last reinstalled the host (ISO 8601); null when never.
      type: str
    install_error:
      description: Why the last reinstall failed (status V(InstallFailed)); empty otherwise.
      type: str
    ssh_host_keys:
      description:
        - The host's SSH host keys (C(type base64) each), the only ones the engine accepts
          when it logs in to the host; recorded when the host was added, replaced only by
          M(kestrel.virt.host)'s O(kestrel.virt.host#module:ssh_host_keys). Empty when none
          is recorded (the engine then does not log in to the host).
      type: list
      elements: str
    power_saving:
      description:
        - How far the power_saving policy's automatic host power management got with the host
          (the policy's C(enable_automatic_host_power_management)); empty when it left the host
          alone.
        - V(maintenance) parked in Maintenance and powered off once the grace period ends,
          V(stopping) being powered off, V(off) powered off through its power management,
          V(starting) powered on for capacity and activated once its agent answers.
      type: str
      sample: ""
    ha_reservation:
      description:
        - The HA reservation of the host's cluster (M(kestrel.virt.cluster)'s
          O(kestrel.virt.cluster#module:ha_reservation)) as it concerns this host.
        - C(enabled) whether the cluster keeps one; C(ok) whether, at the engine loop's last
          check (C(checked_at)), the highly available VMs of this host could all restart on
          the cluster's other Up hosts if it failed (null while off or before the first check).
      type: dict
      sample: {enabled: true, ok: false, checked_at: "2026-12-06T21:40:00+00:00"}
    statistics:
      description:
        - The figures of the engine's last statistics poll of the host; empty before the first.
        - C(sampled_at) (ISO 8601); C(cpu_percent) (share of all the host's CPUs; null until
          two samples); C(memory_used_mib), C(memory_free_mib); C(load_1m), C(load_5m),
          C(load_15m); C(net_rx_bps), C(net_tx_bps), C(disk_read_bps), C(disk_write_bps)
          (its VMs' NICs and disks, bytes per second; null until two samples); C(running_vms).
        - M(kestrel.virt.stats_info) has their history.
      type: dict
      sample: {sampled_at: "2026-12-06T18:00:03+00:00", cpu_percent: 41.7, memory_used_mib: 3012,
               memory_free_mib: 20988, load_1m: 0.8, load_5m: 0.7, load_15m: 0.5,
               net_rx_bps: 1200.0, net_tx_bps: 800.0, disk_read_bps: 0.0,
               disk_write_bps: 4096.0, running_vms: 3}
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str'),
            cluster=dict(type='str'),
        ),
    )
    p = module.params
    module.query('hosts', lambda engine: engine.hosts.info(name=p['name'], cluster=p['cluster']))


if __name__ == '__main__':
    main()
