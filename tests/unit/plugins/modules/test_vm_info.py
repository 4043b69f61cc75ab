# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.modules import vm_info
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import FakeError

VMS = [dict(id='7d3f', name='vm1', status='Up', host='h1',
            devices=[dict(id='d1', type='disk', alias='ua-d1', address=dict(type='pci'))])]


def test_filters_are_passed_and_vms_returned_unchanged(engine, run_module):
    engine.answer = VMS
    result = run_module(vm_info, dict(cluster='demo', host='h1'))
    assert engine.calls == [('vms.info', (), dict(name=None, cluster='demo', host='h1'))]
    assert result['changed'] is False
    assert result['vms'] == VMS


def test_runs_in_check_mode_too(engine, run_module):
    engine.answer = []
    result = run_module(vm_info, dict(name='nope', _ansible_check_mode=True))
    assert result['vms'] == []
    assert 'skipped' not in result


def test_unknown_host_filter_fails_with_its_code(engine, run_module):
    engine.answer = FakeError('HostNotFound', "host 'h9' does not exist", kind='host', name='h9')
    result = run_module(vm_info, dict(host='h9'))
    assert result['failed'] is True
    assert result['error']['code'] == 'HostNotFound'
