#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: host
short_description: Register hypervisor hosts with the kestrel engine
version_added: 0.1.0
description:
  - Add a host to a cluster, move or re-address it, or remove it.
  - Put a host in maintenance (every VM migrates away first) and bring it back.
  - Reinstall a host's agent over SSH with the engine's key (oVirt's reinstall).
  - The engine reaches the host's agent over mutual TLS before it records
    anything, so a host the engine cannot talk to is never registered. Deploy
    the agent first with the C(kestrel.virt.host) role.
  - In check mode the agent is contacted as well; only the database is left untouched.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  name:
    description: Name of the host in the engine.
    type: str
    required: true
  state:
    description:
      - V(present) registers the host or updates its cluster, address and port.
      - V(absent) removes it; a host that still runs VMs is refused.
      - V(maintenance) first checks that every VM on the host can migrate to
        another host of its cluster (the scheduler's filters, all VMs together);
        one that cannot (pinned to this host, no room elsewhere) fails the task
        at once with the VM's name and the scheduler's reasons, and nothing
        changes. Otherwise the host goes C(PreparingForMaintenance) (nothing new
        is placed there), its VMs migrate one at a time to scheduler-chosen hosts,
        and the task waits until the host is C(Maintenance). A host already in
        maintenance is left as it is. Heartbeats and O(state=present) keep a host
        in maintenance.
      - V(active) ends a maintenance once the host's agent answers; a host that
        is not in maintenance is left as it is.
      - V(reinstalled) installs the engine's own agent build on the host again over
        SSH as root, with the engine's key (C(ENGINE_DIR/ssh/id_ed25519), made by
        C(kestrel engine init) and authorized by the C(kestrel.virt.host) role). A
        host that is not in maintenance goes there first, exactly as with
        V(maintenance) (its VMs migrate away, or the task fails and nothing
        changes). The host is C(Installing) while the wheel is copied and
        pip-installed into the agent venv, the agent certificate is re-enrolled
        for the host's key if it expires within 30 days (or O(renew_certificate)),
        or for a new key pair with O(enroll_certificate), and the agent
        restarts; once it answers over mutual TLS the host records
        C(agent_version) and is activated (see O(activate)). Any failure leaves
        the host C(InstallFailed) with the reason in C(install_error).
      - V(reinstalled) is idempotent - a host whose recorded agent version and
        wheel checksum are the engine's is left alone (C(changed=false)) unless
        O(force); a host whose last reinstall failed is reinstalled.
      - The engine logs in over SSH (V(reinstalled), soft fencing) only to a host
        presenting an SSH host key recorded when it was added (reported by its agent
        over mutual TLS, or given as O(ssh_host_keys)); a host whose key changed is
        refused, and V(reinstalled) fails before changing anything.
      - O(address) and O(cluster) are not needed for V(absent), V(maintenance),
        V(active) and V(reinstalled).
    type: str
    choices: [present, absent, maintenance, active, reinstalled]
    default: present
  address:
    description:
      - Address the engine uses to reach the host's agent.
      - Required with O(state=present).
    type: str
  cluster:
    description:
      - Cluster the host belongs to. A host running VMs cannot change cluster.
      - Required with O(state=present).
    type: str
  port:
    description: TCP port of the agent's HTTPS API.
    type: int
    default: 54321
  power_management:
    description:
      - The host's power fence device, used when the host stops answering and a soft
        fence did not bring its agent back (see the C(fencing_policy) of M(kestrel.virt.cluster)).
      - Only a power off confirmed by the agent's C(status) lets the engine restart the
        host's highly available VMs elsewhere.
      - An empty mapping removes it; omitted, the host keeps what it has.
    type: dict
    suboptions:
      agent:
        description:
          - Name of a fence agent with the fence-agents interface, such as C(fence_ipmilan)
            (oVirt's power management type C(ipmilan)); never a path.
          - The engine runs C(/usr/sbin/<agent>), or the agent of that name its administrator
            listed in C(ENGINE_DIR/fence_agents) (one absolute path a line; the lab lists
            C(scripts/fence_kestrel_lab) there). A name it cannot find fails the task.
          - It gets C(action=on|off|status) and the O(power_management.options) as
            C(key=value) lines on stdin; exit 0 is success, for C(status) 0 is on and 2 off.
        type: str
        required: true
      options:
        description:
          - The agent's options, e.g. C(ip), C(username), C(lanplus), C(plug).
          - Names are letters, digits, C(_) and C(-); values one line each; C(action) is the engine's.
          - Values of options whose name contains C(pass) are hidden in the module's output,
            but Ansible may log the task's arguments before the module runs; give the
            password as O(power_management.password).
        type: dict
        default: {}
      password:
        description:
          - The fence device's password, passed to the agent as its C(password) option.
          - Never logged nor shown; the engine shows stored passwords as C(********).
        type: str
  soft_fence_command:
    description:
      - Command the engine runs as root over SSH (with its key, C(ENGINE_DIR/ssh/id_ed25519)
        by default) to restart the agent of a host that stopped answering (the soft fence,
        tried before any power fence).
      - Omitted, the host keeps what it has; a new host gets C(systemctl restart kestrel-agent).
    type: str
  ssh_host_keys:
    description:
      - The host's SSH public host keys (lines of its C(/etc/ssh/ssh_host_*_key.pub)), the only
        ones the engine accepts when it logs in to the host over SSH.
      - Omitted, a new host gets the keys its agent reports over mutual TLS, and a known
        host keeps its recorded keys. Given, they replace the recorded ones - with
        O(state=reinstalled) once a login with them succeeded; use it when the host's
        keys changed on purpose.
    type: list
    elements: str
  force:
    description:
      - With O(state=reinstalled), reinstall even when the host already runs the
        engine's agent build (or take over a reinstall that was interrupted).
    type: bool
    default: false
  activate:
    description:
      - With O(state=reinstalled), activate the host (C(Up)) after a successful
        reinstall; V(false) leaves it in C(Maintenance).
    type: bool
    default: true
  renew_certificate:
    description:
      - With O(state=reinstalled), a new agent certificate from the engine CA for the key
        the host already has, even if the current one is still valid (this also makes the
        reinstall happen). The engine signs only a request for the key its current
        certificate holds.
    type: bool
    default: false
  enroll_certificate:
    description:
      - With O(state=reinstalled), re-key - a new key pair made on the host and a certificate
        from the engine CA for it (this also makes the reinstall happen). Without it the
        host's key is never replaced.
    type: bool
    default: false
  timeout:
    description:
      - With O(state=maintenance) or O(state=reinstalled), seconds to wait for all the
        migrations together.
      - When it runs out, or a migration fails, the host is put back to C(Up) and
        the task fails naming the VM; VMs already migrated stay where they went.
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
    support: full
"""

EXAMPLES = r"""
- name: Register h1
  kestrel.virt.host:
    name: h1
    address: 10.77.0.1
    cluster: demo

- name: Register h2 with an IPMI fence device, so its HA VMs can restart elsewhere
  kestrel.virt.host:
    name: h2
    address: 10.77.0.2
    cluster: demo
    power_management:
      agent: fence_ipmilan
      options: {ip: 10.0.9.2, username: admin, lanplus: 1}
      password: "{{ ipmi_password }}"

- name: Put h1 in maintenance (its VMs migrate to the other hosts first)
  kestrel.virt.host:
    name: h1
    state: maintenance
  register: h1_maintenance

- name: Show where each VM went
  ansible.builtin.debug:
    msg: "{{ h1_maintenance.host.migrations | map(attribute='destination') | list }}"

- name: Bring h1 back
  kestrel.virt.host:
    name: h1
    state: active

- name: Reinstall h1's agent if it does not run the engine's build (maintenance first)
  kestrel.virt.host:
    name: h1
    state: reinstalled

- name: Reinstall h2 anyway, renew its certificate, keep it in maintenance
  kestrel.virt.host:
    name: h2
    state: reinstalled
    force: true
    renew_certificate: true
    activate: false

- name: Reinstall h3, whose SSH host key was regenerated on purpose, with a new key pair
  kestrel.virt.host:
    name: h3
    state: reinstalled
    force: true
    enroll_certificate: true
    ssh_host_keys:
      - "{{ lookup('ansible.builtin.file', 'h3/ssh_host_ed25519_key.pub') }}"

- name: Remove a host that runs no VMs
  kestrel.virt.host:
    name: h1
    state: absent
"""

RETURN = r"""
host:
  description: The host after the task (predicted in check mode); null when absent.
  returned: always
  type: dict
  contains:
    id:
      description: Engine identifier.
      type: str
    name:
      description: Name of the host.
      type: str
      sample: h1
    cluster:
      description: Cluster of the host.
      type: str
      sample: demo
    address:
      description: Address of the agent.
      type: str
      sample: 10.77.0.1
    port:
      description: Port of the agent.
      type: int
      sample: 54321
    status:
      description: Host status as the engine last saw it.
      type: str
      sample: Up
    hostname:
      description: Host name the agent reported.
      type: str
    host_uuid:
      description: libvirt's host UUID.
      type: str
    cpus:
      description: Logical CPUs the host has.
      type: int
      sample: 2
    memory_mib:
      description: Physical memory of the host in MiB.
      type: int
      sample: 24000
    libvirt_version:
      description: libvirt version on the host.
      type: str
      sample: 9.0.0
    last_seen:
      description: When the engine last reached the agent (ISO 8601).
      type: str
    agent_version:
      description: Agent version the engine last installed (V(reinstalled)); empty if never.
      type: str
      sample: 0.1.0
    agent_wheel_sha256:
      description: SHA-256 of the agent wheel the engine last installed; empty if never.
      type: str
    agent_installed_at:
      description: When the engine last reinstalled the host (ISO 8601); null if never.
      type: str
    install_error:
      description: Why the last reinstall failed (status C(InstallFailed)); empty otherwise.
      type: str
    ssh_host_keys:
      description: The SSH host keys the engine accepts from the host (C(type base64) each).
      type: list
      elements: str
    ha_reservation:
      description:
        - C(enabled) whether the cluster keeps an HA reservation; C(ok) whether at its last check
          (C(checked_at)) this host's HA VMs could restart on the other Up hosts (null if none).
      type: dict
    storage_domains:
      description: Storage domains the agent reports (name, path, space); null when not reported.
      type: list
      elements: dict
    migrations:
      description:
        - With O(state=maintenance), the VMs moved off the host, in order. In check
          mode the planned moves, with status C(planned).
      returned: when O(state) is V(maintenance) or V(active)
      type: list
      elements: dict
      sample:
        - {vm: web1, source: h1, destination: h2, status: succeeded, downtime_ms: 119, duration_s: 2.9}
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent', 'maintenance', 'active',
                                            'reinstalled'],
                       default='present'),
            force=dict(type='bool', default=False),
            activate=dict(type='bool', default=True),
            renew_certificate=dict(type='bool', default=False),
            enroll_certificate=dict(type='bool', default=False),
            ssh_host_keys=dict(type='list', elements='str', no_log=False),
            address=dict(type='str'),
            cluster=dict(type='str'),
            port=dict(type='int', default=54321),
            timeout=dict(type='int', default=600),
            power_management=dict(type='dict', options=dict(
                agent=dict(type='str', required=True),
                options=dict(type='dict', default={}),
                password=dict(type='str', no_log=True),
            )),
            soft_fence_command=dict(type='str'),
        ),
        required_if=[('state', 'present', ('address', 'cluster'))],
        entity_key='host',
    )
    p = module.params
    if p['state'] == 'absent':
        module.apply(lambda engine, check_mode: engine.hosts.remove(p['name'], check_mode=check_mode))
    elif p['state'] == 'maintenance':
        module.apply(lambda engine, check_mode: engine.hosts.maintenance(
            p['name'], check_mode=check_mode, timeout=p['timeout']))
    elif p['state'] == 'reinstalled':
        module.apply(lambda engine, check_mode: engine.hosts.reinstall(
            p['name'], force=p['force'], activate=p['activate'],
            renew_certificate=p['renew_certificate'],
            enroll_certificate=p['enroll_certificate'], ssh_host_keys=p['ssh_host_keys'],
            timeout=p['timeout'], check_mode=check_mode))
    elif p['state'] == 'active':
        module.apply(lambda engine, check_mode: engine.hosts.activate(p['name'], check_mode=check_mode))
    else:
        module.apply(lambda engine, check_mode: engine.hosts.ensure(
            p['name'], address=p['address'], cluster=p['cluster'], port=p['port'],
            power_management=_power_management(module), soft_fence_command=p['soft_fence_command'],
            ssh_host_keys=p['ssh_host_keys'], check_mode=check_mode))


def _power_management(module):
    """What the engine stores: the password joins the agent's options, and every
    option value named like a password is kept out of what the module prints."""
    pm = module.params['power_management']
    if not pm:
        return pm  # None keeps the host's; an empty mapping removes it
    options = dict(pm['options'] or {})
    if pm['password'] is not None:
        options['password'] = pm['password']
    for key, value in options.items():
        if 'pass' in key.lower() and value not in (None, ''):
            module.no_log_values.add(str(value))
    return dict(agent=pm['agent'], options=options)


if __name__ == '__main__':
    main()
