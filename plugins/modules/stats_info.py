#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: stats_info
short_description: Read a host's or VM's statistics and their history from the kestrel engine
version_added: 0.1.0
description:
  - The current figures of a host or VM (from the engine's last statistics poll of its
    host) and their history over a window of time - CPU, memory, load, network and disk
    rates.
  - History is kept per minute for a day, per hour for 30 days and per day for a year;
    without O(resolution) the finest kept for the window's length is returned.
  - Give at most two of O(since), O(until) and O(period); by default the last 24 hours.
author:
  - kestrel.virt maintainers (@kestrel-virt)
options:
  host:
    description: The host whose statistics to read. Mutually exclusive with O(vm).
    type: str
  vm:
    description: The VM whose statistics to read. Mutually exclusive with O(host).
    type: str
  period:
    description:
      - How far back from O(until) (or forward from O(since)) - a number and a unit,
        V(m) minutes, V(h) hours, V(d) days, V(w) weeks or V(y) years (365 days),
        such as V(1h), V(24h), V(7d), V(30d) or V(1y); at most V(1y).
      - Defaults to V(24h) when neither O(since) nor both bounds are given.
    type: str
  since:
    description: Start of the window, an ISO 8601 date and time (UTC when it names no zone).
    type: str
  until:
    description: End of the window, an ISO 8601 date and time (UTC when it names no zone); by default now.
    type: str
  resolution:
    description:
      - V(raw) (one sample a minute), V(hour) or V(day) averages.
      - By default V(raw) for a window up to a day, V(hour) up to 30 days, else V(day).
    type: str
    choices: [raw, hour, day]
extends_documentation_fragment:
  - kestrel.virt.engine
  - kestrel.virt.engine.attributes
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: N/A
seealso:
  - module: kestrel.virt.host_info
  - module: kestrel.virt.vm_info
"""

EXAMPLES = r"""
- name: How busy was h1 over the last week?
  kestrel.virt.stats_info:
    host: h1
    period: 7d
  register: h1_week

- name: Its busiest hour
  ansible.builtin.debug:
    msg: "{{ h1_week.statistics.samples | map(attribute='cpu_percent_max') | max }}"

- name: A VM's figures, minute by minute, over an afternoon
  kestrel.virt.stats_info:
    vm: web1
    since: "2026-12-06T13:00:00+00:00"
    until: "2026-12-06T17:00:00+00:00"
    resolution: raw
"""

RETURN = r"""
statistics:
  description: The object's current figures and its history over the window.
  returned: success
  type: dict
  contains:
    kind:
      description: V(host) or V(vm).
      type: str
      sample: host
    name:
      description: The host's or VM's name.
      type: str
      sample: h1
    current:
      description:
        - The figures of the last poll (as host_info's and vm_info's C(statistics));
          empty before the first poll and for a VM that is not running.
        - C(sampled_at) (ISO 8601), C(cpu_percent) (a host - share of all its CPUs; a
          VM - 100 per busy host CPU, as top shows it; null until two samples),
          C(memory_used_mib), C(net_rx_bps), C(net_tx_bps), C(disk_read_bps),
          C(disk_write_bps) (bytes per second; null until two samples).
        - A host also has C(memory_free_mib), C(load_1m), C(load_5m), C(load_15m) and
          C(running_vms); a VM C(balloon_current_mib) and C(balloon_target_mib).
      type: dict
      sample: {sampled_at: "2026-12-06T18:00:03+00:00", cpu_percent: 41.7, memory_used_mib: 3012,
               memory_free_mib: 20988, load_1m: 0.8, load_5m: 0.7, load_15m: 0.5,
               net_rx_bps: 1200.0, net_tx_bps: 800.0, disk_read_bps: 0.0, disk_write_bps: 4096.0,
               running_vms: 3}
    since:
      description: Start of the window (ISO 8601).
      type: str
      sample: "2026-12-05T18:00:00+00:00"
    until:
      description: End of the window (ISO 8601).
      type: str
      sample: "2026-12-06T18:00:00+00:00"
    resolution:
      description: V(raw), V(hour) or V(day) - what each sample covers.
      type: str
      sample: raw
    samples:
      description:
        - Oldest first. C(at) is the start of the sample's minute, hour or day (ISO 8601),
          C(samples) how many minutes it averages; the figures are averages and
          C(cpu_percent_max) the highest CPU seen in it.
        - Figures the object does not have (a VM's C(memory_free_mib) and C(load_1m)) are null.
      type: list
      elements: dict
      sample:
        - {at: "2026-12-06T17:00:00+00:00", samples: 60, cpu_percent: 38.2, cpu_percent_max: 71.0,
           memory_used_mib: 3004.5, memory_free_mib: 20995.5, load_1m: 0.7, net_rx_bps: 1100.0,
           net_tx_bps: 700.0, disk_read_bps: 0.0, disk_write_bps: 3900.0}
"""

from ansible_collections.kestrel.virt.plugins.module_utils._kestrel import KestrelModule


def main():
    module = KestrelModule(
        argument_spec=dict(
            host=dict(type='str'),
            vm=dict(type='str'),
            period=dict(type='str'),
            since=dict(type='str'),
            until=dict(type='str'),
            resolution=dict(type='str', choices=['raw', 'hour', 'day']),
        ),
        mutually_exclusive=[('host', 'vm')],
        required_one_of=[('host', 'vm')],
    )
    p = module.params
    window = dict(period=p['period'], since=p['since'], until=p['until'],
                  resolution=p['resolution'])
    if p['host']:
        module.query('statistics', lambda engine: engine.stats.host(p['host'], **window))
    else:
        module.query('statistics', lambda engine: engine.stats.vm(p['vm'], **window))


if __name__ == '__main__':
    main()
