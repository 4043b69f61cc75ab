# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.modules import network
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import (
    FakeError,
    Outcome,
)


def test_present_passes_unset_options_as_none(engine, run_module):
    engine.answer = Outcome(True, dict(name='vms', bridge='br-vm'))
    result = run_module(network, dict(name='vms', cluster='c1', bridge='br-vm', required=True))
    assert engine.calls == [('networks.ensure', ('vms',), dict(
        cluster='c1', bridge='br-vm', vlan=None, mtu=None, required=True, description=None,
        check_mode=False))]
    assert result['changed'] is True and result['network']['bridge'] == 'br-vm'


def test_absent_removes(engine, run_module):
    engine.answer = Outcome(True, None, dict(before=dict(name='vms'), after={}))
    result = run_module(network, dict(name='vms', cluster='c1', state='absent', _ansible_check_mode=True))
    assert engine.calls == [('networks.remove', ('vms',), dict(cluster='c1', check_mode=True))]
    assert result['network'] is None and result['changed'] is True


def test_engine_refusal_fails_with_its_message(engine, run_module):
    engine.answer = FakeError('InvalidSpec', 'vlan: must be a whole number from 1 to 4094 (got 5000)',
                              field='vlan')
    result = run_module(network, dict(name='vms', cluster='c1', vlan=5000))
    assert result['failed'] is True and result['msg'].startswith('vlan:')
    assert result['error']['details'] == dict(field='vlan')


def test_cluster_is_required(engine, run_module):
    result = run_module(network, dict(name='vms'))
    assert result['failed'] is True and 'cluster' in result['msg']
    assert engine.calls == []
