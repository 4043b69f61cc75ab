#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster
short_description: Manage kestrel clusters
version_added: 0.1.0
description:
  - Create, update or remove a cluster in the kestrel engine.
  - A cluster is a set of hosts that share networks, storage and a MAC pool;
    VMs are scheduled onto the hosts of their cluster.
  - Options left unset keep their current value, so a task naming only some
    options never resets the others.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Name of the cluster.
    type: str
    required: true
  state:
    description:
      - V(present) creates the cluster or updates the options given.
      - V(absent) removes it; a cluster that still has hosts or VMs is refused.
    type: str
    choices: [present, absent]
    default: present
  description:
    description: Free text shown to people.
    type: str
  virt_type:
    description:
      - How VMs of this cluster are accelerated. New clusters use V(kvm).
      - V(qemu) (software emulation, TCG) is for hosts without usable KVM, such
        as nested test labs.
    type: str
    choices: [kvm, qemu]
  memory_overcommit:
    description:
      - Percentage of a host's physical memory the scheduler may hand out;
        V(100) (the default for new clusters) means no overcommit.
    type: int
  mac_pool:
    description:
      - MAC address ranges NICs without an explicit MAC get their address
        from, each written C(first-last).
      - Every address must be unicast and usable by a NIC, so a range that holds the
        all-zero address, a multicast address (an odd first octet) or the broadcast
        address is refused.
      - A MAC is unique across the engine, whichever cluster's pool it came from (as
        oVirt's Default pool, shared by every cluster, allows no duplicates); every
        cluster starts with the same default range.
    type: list
    elements: str
  scheduling_policy:
    description:
      - The cluster's scheduling policy, as in oVirt; M(kestrel.virt.scheduling_policy_info)
        lists each policy's filters, weights, balancer and parameters.
      - New clusters use V(none).
    type: str
    choices: [none, evenly_distributed, power_saving, vm_evenly_distributed, cluster_maintenance]
  scheduling_policy_properties:
    description:
      - Values for the policy's parameters, for example C(high_utilization=75) in YAML mapping
        form; a parameter not given keeps the policy's default.
      - Changing O(scheduling_policy) without this option starts the new policy from its defaults.
      - With V(power_saving), C(enable_automatic_host_power_management=1) powers down empty hosts
        beyond C(hosts_in_reserve) through their power management, after
        C(host_power_off_grace_minutes) in maintenance, and powers one back up when capacity is
        needed (a VM or HA restart no host can take, every host over C(high_utilization)).
      - V(evenly_distributed) and V(power_saving) take C(vm_cooldown_minutes) (default 30); a VM that
        finished a migration within it is not moved by the balancer.
    type: dict
  migration_policy:
    description:
      - How a live migration of the cluster's VMs converges, as oVirt's migration policies.
        V(minimal_downtime) raises the allowed downtime step by step,
        V(post_copy) switches to post-copy when pre-copy stalls,
        V(suspend_workload) pauses the guest briefly to finish.
      - New clusters use V(minimal_downtime).
    type: str
    choices: [minimal_downtime, post_copy, suspend_workload]
  migration_bandwidth_mbps:
    description:
      - Bandwidth limit of each migration, in Mbps; V(0) (the default for new clusters) means no limit.
    type: int
  migration_encrypted:
    description:
      - Encrypt live migrations, as oVirt's "Encrypted VM migration" cluster option does. The
        libvirt daemons then talk over C(qemu+tls) (port 16514) and QEMU's migration stream
        uses TLS too (C(VIR_MIGRATE_TLS)), with certificates from the engine CA.
      - Every host of the cluster needs libvirt TLS, which the M(kestrel.virt.host) role sets
        up by default (C(kestrel_host_libvirt_tls)); a migration to a host without it fails
        and the VM keeps running on its source.
      - New clusters use V(true); clusters created before that default keep what they had
        (their hosts may predate libvirt TLS). Omitted, an existing cluster keeps its value.
        V(false) sends migrations in clear text over C(qemu+tcp).
    type: bool
  fencing_policy:
    description:
      - How the engine fences a host that stopped answering (NonResponsive) before it restarts
        the host's highly available VMs elsewhere, as oVirt's fencing policy does. First a soft
        fence (the host's C(soft_fence_command) over SSH), then, if the agent is still silent,
        a power fence through the host's C(power_management) agent.
      - An option not given keeps the cluster's current value (new clusters start from the
        defaults given below).
    type: dict
    suboptions:
      enabled:
        description:
          - Fence at all. When false, the VMs of a silent host stay Unknown until it answers.
          - Default for a new cluster is C(true).
        type: bool
      skip_if_connectivity_broken:
        description:
          - Fence nothing while O(fencing_policy.connectivity_threshold_percent) or more of the
            cluster's hosts lost connectivity at once, since the engine's own network is then the
            likelier fault.
          - Default for a new cluster is C(true).
        type: bool
      connectivity_threshold_percent:
        description:
          - See O(fencing_policy.skip_if_connectivity_broken); 1 to 100.
          - Default for a new cluster is C(50).
        type: int
      soft_fence_grace_s:
        description:
          - Seconds the agent has to answer after a soft fence before the power fence.
          - Default for a new cluster is C(30).
        type: float
      ssh_timeout_s:
        description:
          - Seconds the soft fence's SSH connection may take.
          - Default for a new cluster is C(10).
        type: float
      power_timeout_s:
        description:
          - Seconds the power agent has to confirm the host is off (C(status) says off).
          - Default for a new cluster is C(60).
        type: float
      power_on_after_fence:
        description:
          - Switch a fenced host on again once its HA VMs were restarted elsewhere.
          - Default for a new cluster is C(true).
        type: bool
  ballooning:
    description:
      - Memory balloon optimization, as oVirt's cluster option of that name (MoM's policy).
        When on, each host's agent shrinks the balloons of the cluster's running VMs while the
        host's free memory is under its C([ballooning] low_free_percent) (agent.conf), one step
        per interval and never below each VM's C(balloon.guarantee), and grows them back to
        their full memory once free memory is over C(high_free_percent).
      - Only VMs with a balloon and a guarantee are shrunk. The setting reaches a VM with its
        domain XML, so it applies from the VM's next start.
      - New clusters use V(false).
    type: bool
  ha_reservation:
    description:
      - HA VM reservation, as oVirt's cluster option of that name. The engine loop checks every
        minute that the highly available VMs of any one host could restart on the cluster's
        other Up hosts if it failed (their memory within those hosts' schedulable memory,
        their vCPUs within their CPUs, packed largest first); when they could not, a warning
        event names the hosts and the cluster's C(ha_reservation_ok) turns V(false) (an event
        says so again when it is restored).
      - The scheduler then also prefers, when it starts or migrates a VM, the host that keeps
        every host's HA VMs restartable (the C(ha_reservation) weight); soft affinity still
        outweighs it.
      - New clusters use V(false).
    type: bool
  custom_properties:
    description:
      - The VM custom properties the cluster's VMs may set, each name with the regular
        expression its value must match in full, as oVirt's C(UserDefinedVMProperties)
        (C(name=regexp)). Custom properties reach the hosts' hook scripts, which run as root.
      - A VM that sets a property not listed, or a value its pattern does not match, is
        refused when created or changed, and again at every start (a VM whose properties
        are no longer allowed stays Down until they are allowed or removed from it).
      - Names are 1-64 lowercase letters, digits and C(_), starting with a letter; patterns
        are Python regular expressions of up to 1024 characters.
      - The complete list; V({}) allows none. New clusters allow none.
    type: dict
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
- name: A cluster for a lab without KVM
  kestrel.virt.cluster:
    name: demo
    description: nested test lab
    virt_type: qemu

- name: Allow 150% memory overcommit, keep everything else
  kestrel.virt.cluster:
    name: production
    memory_overcommit: 150

- name: Spread load evenly; move VMs off hosts above 75% CPU for 5 minutes
  kestrel.virt.cluster:
    name: production
    scheduling_policy: evenly_distributed
    scheduling_policy_properties:
      high_utilization: 75
      cpu_overcommit_duration_minutes: 5
      vm_cooldown_minutes: 60

- name: Pack VMs on few hosts; power empty hosts down through their fence agents, one spare kept up
  kestrel.virt.cluster:
    name: production
    scheduling_policy: power_saving
    scheduling_policy_properties:
      enable_automatic_host_power_management: 1
      hosts_in_reserve: 1
      host_power_off_grace_minutes: 10

- name: Let hosts short of memory shrink VM balloons down to each VM's guarantee
  kestrel.virt.cluster:
    name: production
    ballooning: true

- name: Keep room for the HA VMs of any one failed host, and warn when there is none
  kestrel.virt.cluster:
    name: production
    ha_reservation: true

- name: Let VMs set sap_agent (true or false) and numa_policy for the hosts' hooks
  kestrel.virt.cluster:
    name: production
    custom_properties:
      sap_agent: '^(true|false)$'
      numa_policy: 'interleave|strict|preferred'

- name: Remove an empty cluster
  kestrel.virt.cluster:
    name: demo
    state: absent
"""

RETURN = r"""
cluster:
  description: The cluster after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    id:
      description: Engine identifier.
      type: str
      sample: 0c9b4e9e-3d1b-4a4e-9a57-2f1f8e0f6a11
    name:
      description: Name of the cluster.
      type: str
      sample: demo
    description:
      description: Free text.
      type: str
      sample: nested test lab
    virt_type:
      description: V(kvm) or V(qemu).
      type: str
      sample: qemu
    memory_overcommit:
      description: Memory the scheduler may hand out, in percent of a host's memory.
      type: int
      sample: 100
    mac_pool:
      description: MAC address ranges.
      type: list
      elements: str
      sample: ["56:6f:4b:00:00:00-56:6f:4b:ff:ff:ff"]
    scheduling_policy:
      description: Name of the cluster's scheduling policy.
      type: str
      sample: evenly_distributed
    scheduling_policy_properties:
      description: The parameter values the cluster sets (the others are the policy's defaults).
      type: dict
      sample: {high_utilization: 75}
    migration_policy:
      description: How live migrations converge.
      type: str
      sample: minimal_downtime
    migration_bandwidth_mbps:
      description: Bandwidth limit of each migration in Mbps, 0 for none.
      type: int
      sample: 0
    migration_encrypted:
      description: Whether live migrations go over libvirt TLS.
      type: bool
      sample: true
    ballooning:
      description: Whether the hosts may shrink the balloons of the cluster's VMs under memory pressure.
      type: bool
      sample: false
    custom_properties:
      description: The custom properties the cluster's VMs may set, each with its value pattern.
      type: dict
      sample: {sap_agent: '^(true|false)$'}
    ha_reservation:
      description: Whether the engine keeps checking that any one failed host's HA VMs could restart.
      type: bool
      sample: true
    ha_reservation_ok:
      description:
        - The engine loop's last check, V(true) when every Up host's HA VMs could restart on the
          others; null while C(ha_reservation) is off or before the first check.
      type: bool
      sample: false
    ha_reservation_detail:
      description:
        - The last check's C(hosts) (those whose HA VMs would not all fit elsewhere), C(message)
          and C(checked_at); empty while there is no check.
      type: dict
      sample: {hosts: [h1], message: "...", checked_at: "2026-12-06T21:40:00+00:00"}
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            description=dict(type='str'),
            virt_type=dict(type='str', choices=['kvm', 'qemu']),
            memory_overcommit=dict(type='int'),
            mac_pool=dict(type='list', elements='str'),
            scheduling_policy=dict(type='str', choices=['none', 'evenly_distributed', 'power_saving',
                                                        'vm_evenly_distributed', 'cluster_maintenance']),
            scheduling_policy_properties=dict(type='dict'),
            migration_policy=dict(type='str', choices=['minimal_downtime', 'post_copy',
                                                       'suspend_workload']),
            migration_bandwidth_mbps=dict(type='int'),
            migration_encrypted=dict(type='bool'),
            # No defaults here: an option left out keeps the cluster's value.
            fencing_policy=dict(type='dict', options=dict(
                enabled=dict(type='bool'),
                skip_if_connectivity_broken=dict(type='bool'),
                connectivity_threshold_percent=dict(type='int'),
                soft_fence_grace_s=dict(type='float'),
                ssh_timeout_s=dict(type='float'),
                power_timeout_s=dict(type='float'),
                power_on_after_fence=dict(type='bool'),
            )),
            ballooning=dict(type='bool'),
            ha_reservation=dict(type='bool'),
            custom_properties=dict(type='dict'),
        ),
        entity_key='cluster',
    )
    p = module.params
    fencing = p['fencing_policy']
    if fencing is not None:
        fencing = {key: value for key, value in fencing.items() if value is not None}
    if p['state'] == 'absent':
        module.apply(lambda engine, check_mode: engine.clusters.remove(p['name'], check_mode=check_mode))
    else:
        module.apply(lambda engine, check_mode: engine.clusters.ensure(
            p['name'], description=p['description'], virt_type=p['virt_type'],
            memory_overcommit=p['memory_overcommit'], mac_pool=p['mac_pool'],
            scheduling_policy=p['scheduling_policy'],
            scheduling_policy_properties=p['scheduling_policy_properties'],
            migration_policy=p['migration_policy'],
            migration_bandwidth_mbps=p['migration_bandwidth_mbps'],
            migration_encrypted=p['migration_encrypted'],
            ballooning=p['ballooning'], custom_properties=p['custom_properties'],
            ha_reservation=p['ha_reservation'], fencing_policy=fencing, check_mode=check_mode))


if __name__ == '__main__':
    main()
