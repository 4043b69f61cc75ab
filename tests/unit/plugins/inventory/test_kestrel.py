# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The inventory's own decisions: groups, and which guest address becomes ansible_host."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleError
from ansible.inventory.data import InventoryData
from ansible_collections.kestrel.virt.plugins.inventory import kestrel
from ansible_collections.kestrel.virt.plugins.module_utils import _kestrel
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import FakeEngine

VM = dict(id='v-1', name='web-1', cluster='prod', host='h1', status='Up', memory_mib=128, vcpus=1,
          custom_properties={}, tags=['web', 'Front End'],
          nics=[dict(name='nic1', network='vms', mac='56:6f:4b:00:00:01')],
          guest=dict(ips=['127.0.0.1', 'fe80::1%eth0', '2001:db8::5', '192.0.2.7'],
                     hostname='web-1'))


@pytest.mark.parametrize('ips, expected', [
    (['127.0.0.1', 'fe80::1', '169.254.1.1', '2001:db8::5', '192.0.2.7'], '192.0.2.7'),
    (['::1', 'fe80::1%eth0', '2001:db8::5/64'], '2001:db8::5'),
    (['127.0.0.1', 'not an address'], None),
    ([], None),
])
def test_ansible_host_prefers_a_routable_ipv4(ips, expected):
    assert kestrel.first_ip(dict(guest=dict(ips=ips))) == expected


def test_a_vm_is_grouped_by_cluster_host_status_and_tags():
    plugin = kestrel.InventoryModule()
    plugin.inventory = InventoryData()
    plugin.get_option = lambda name: dict(strict=False).get(name)
    plugin._add_vm(VM)
    groups = plugin.inventory.get_host('web-1').get_groups()
    assert sorted(g.name for g in groups) == ['cluster_prod', 'host_h1', 'status_up',
                                              'tag_front_end', 'tag_web']
    facts = plugin.inventory.get_host('web-1').vars
    assert facts['ansible_host'] == '192.0.2.7'
    assert facts['kestrel_tags'] == ['web', 'Front End']
    assert facts['kestrel_guest']['hostname'] == 'web-1'


def test_a_vm_without_guest_data_has_no_ansible_host():
    plugin = kestrel.InventoryModule()
    plugin.inventory = InventoryData()
    plugin.get_option = lambda name: dict(strict=False).get(name)
    plugin._add_vm(dict(VM, name='db-1', host=None, status='Down', tags=[], guest=dict(ips=[])))
    host = plugin.inventory.get_host('db-1')
    assert 'ansible_host' not in host.vars
    assert sorted(g.name for g in host.get_groups()) == ['cluster_prod', 'status_down']


def _parse(monkeypatch, options):
    plugin = kestrel.InventoryModule()
    monkeypatch.setattr(plugin, '_read_config_data', lambda path: None)
    plugin.get_option = lambda name: dict(options, strict=False).get(name)
    plugin.parse(InventoryData(), None, 'kestrel.yml')
    return plugin


def test_engine_url_lists_the_vms_through_the_api(monkeypatch):
    fake = FakeEngine(answer=[VM])
    monkeypatch.setattr(_kestrel, 'RemoteEngine', fake)
    plugin = _parse(monkeypatch, dict(engine_url='https://engine:8443', token='kst_1_s',
                                      ca_file='/ca.pem', cluster='prod'))
    assert fake.opened_with == dict(engine_url='https://engine:8443', username=None,
                                    password=None, token='kst_1_s', ca_file='/ca.pem')
    assert fake.calls == [('vms.info', (), dict(cluster='prod'))]
    assert plugin.inventory.get_host('web-1').vars['kestrel_cluster'] == 'prod'


def test_mixing_the_api_and_the_database_is_refused(monkeypatch):
    monkeypatch.setattr(_kestrel, 'RemoteEngine', FakeEngine())
    with pytest.raises(AnsibleError, match='engine_url/token .the engine API. and engine_dir'):
        _parse(monkeypatch, dict(engine_url='https://engine:8443', token='kst_1_s',
                                 engine_dir='/srv/engine'))
