# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.modules import template, template_info, vm
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import Outcome


def test_from_a_vm_passes_the_version_and_seal(engine, run_module):
    engine.answer = Outcome(True, dict(name='deb', version=dict(number=2, name='v2')))
    result = run_module(template, dict(name='deb', vm='golden', seal=True,
                                       version=dict(number=2, name='v2')))
    assert engine.calls == [('templates.ensure', ('deb',), dict(
        state='present', vm='golden', disk=None, cluster=None,
        version=dict(number=2, name='v2'), seal=True, description=None, settings=None,
        snapshot_id=None, timeout=None, check_mode=False))]
    assert result['template']['version']['number'] == 2


def test_from_a_disk_the_settings_are_a_vm_spec(engine, run_module):
    engine.answer = Outcome(True, dict(name='cloud'))
    run_module(template, dict(name='cloud', disk='debian12', cluster='c1', memory='2GiB',
                              cpu_cores=2, nics=[dict(name='nic1', network='br0')],
                              _ansible_check_mode=True))
    call = engine.calls[0][2]
    assert call['settings'] == dict(memory='2GiB', cpu=dict(cores=2),
                                    nics=[dict(name='nic1', network='br0')])
    assert call['check_mode'] is True and call['disk'] == 'debian12'


def test_vm_and_disk_exclude_each_other(engine, run_module):
    result = run_module(template, dict(name='t', vm='a', disk='b'))
    assert result['failed'] is True and 'mutually exclusive' in result['msg'] and engine.calls == []


def test_absent_of_one_version(engine, run_module):
    engine.answer = Outcome(True, None)
    run_module(template, dict(name='t', state='absent', version=dict(number=1)))
    assert engine.calls[0][2]['state'] == 'absent'
    assert engine.calls[0][2]['version'] == dict(number=1)


def test_info(engine, run_module):
    engine.answer = [dict(name='t', version=dict(number=1, name=''))]
    result = run_module(template_info, dict(name='t'))
    assert engine.calls == [('templates.info', (), dict(name='t', version=None))]
    assert result['templates'][0]['name'] == 't' and result['changed'] is False


def test_vm_from_a_template_thin_by_default(engine, run_module):
    engine.answer = Outcome(True, dict(name='web1'))
    run_module(vm, dict(name='web1', template='deb', template_version=2))
    spec = engine.calls[0][1][0]
    assert spec == dict(name='web1', template='deb', template_version=2)
    run_module(vm, dict(name='web2', template='deb', clone=True))
    assert engine.calls[1][1][0] == dict(name='web2', template='deb', clone=True)
    run_module(vm, dict(name='web3', snapshot_vm='web1'))
    assert engine.calls[2][1][0] == dict(name='web3', snapshot_vm='web1')
    result = run_module(vm, dict(name='web4', snapshot_vm='web1', template='deb'))
    assert result['failed'] is True and 'mutually exclusive' in result['msg']


def test_from_a_snapshot_of_a_vm(engine, run_module):
    engine.answer = Outcome(True, dict(name='before'))
    run_module(template, dict(name='before', vm='web1', snapshot_id='3a0c7a4e'))
    assert engine.calls[0][2]['vm'] == 'web1' and engine.calls[0][2]['snapshot_id'] == '3a0c7a4e'
    result = run_module(template, dict(name='before', disk='d', snapshot_id='3a0c7a4e'))
    assert result['failed'] is True and 'snapshot_id' in result['msg'] and len(engine.calls) == 1


def test_vm_from_a_snapshot_by_description_or_id(engine, run_module):
    engine.answer = Outcome(True, dict(name='web5'))
    run_module(vm, dict(name='web5', snapshot_vm='web1', snapshot_name='before upgrade'))
    assert engine.calls[0][1][0] == dict(name='web5', snapshot_vm='web1',
                                         snapshot_name='before upgrade')
    run_module(vm, dict(name='web6', snapshot_vm='web1', snapshot_id='3a0c7a4e'))
    assert engine.calls[1][1][0] == dict(name='web6', snapshot_vm='web1', snapshot_id='3a0c7a4e')
    result = run_module(vm, dict(name='web7', snapshot_name='before upgrade'))
    assert result['failed'] is True and 'snapshot_vm' in result['msg']
    result = run_module(vm, dict(name='web7', snapshot_vm='web1', snapshot_name='a',
                                 snapshot_id='b'))
    assert result['failed'] is True and 'mutually exclusive' in result['msg']
    assert len(engine.calls) == 2
