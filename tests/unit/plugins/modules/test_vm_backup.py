# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.modules import vm_backup, vm_backup_info
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import Outcome


def test_present_makes_a_backup_with_the_mode_and_domain(engine, run_module):
    engine.answer = Outcome(True, dict(id='b1', mode='full', fallback_reason='VM is Down'))
    result = run_module(vm_backup, dict(vm_name='web', storage_domain='backups',
                                        _ansible_check_mode=True))
    assert engine.calls == [('backups.create', ('web',), dict(
        storage_domain='backups', mode='incremental', description='', timeout=3600,
        check_mode=True))]
    assert result['changed'] and result['backup']['fallback_reason'] == 'VM is Down'


def test_present_with_an_existing_backup_id_is_no_change(engine, run_module):
    engine.answer = [dict(id='b1', vm='web')]
    result = run_module(vm_backup, dict(vm_name='web', backup_id='b1'))
    assert engine.calls == [('backups.info', (), dict(backup_id='b1'))]
    assert result['changed'] is False and result['backup']['id'] == 'b1'


def test_absent_and_restored_pass_the_backup_and_target(engine, run_module):
    engine.answer = Outcome(True, dict(id='b1'))
    run_module(vm_backup, dict(backup_id='b1', state='absent'))
    run_module(vm_backup, dict(backup_id='b1', state='restored', restore_vm_name='web2'))
    assert engine.calls == [
        ('backups.remove', ('b1',), dict(check_mode=False)),
        ('backups.restore', ('b1',), dict(vm_name='web2', disk_name='', disk='',
                                          storage_domain='', check_mode=False))]


def test_bad_combinations_are_refused_naming_the_options(engine, run_module):
    both = run_module(vm_backup, dict(backup_id='b1', state='restored', restore_vm_name='a',
                                      restore_disk_name='b'))
    assert both['failed'] and 'restore_vm_name, restore_disk_name' in both['msg']
    missing = run_module(vm_backup, dict(state='absent'))
    assert missing['failed'] and 'backup_id' in missing['msg']
    nothing = run_module(vm_backup, dict())
    assert nothing['failed'] and nothing['msg'].startswith('vm_name:')
    assert engine.calls == []


def test_info_lists_a_vms_backups(engine, run_module):
    engine.answer = [dict(id='b1'), dict(id='b2')]
    result = run_module(vm_backup_info, dict(vm_name='web'))
    assert engine.calls == [('backups.info', (), dict(vm_name='web', backup_id=''))]
    assert [b['id'] for b in result['backups']] == ['b1', 'b2']
