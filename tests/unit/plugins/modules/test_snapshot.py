# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.modules import snapshot, snapshot_info
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import (
    FakeError,
    Outcome,
)

SNAP = dict(id='s1', vm='vm1', description='before upgrade', status='ok', use_memory=True,
            quiesced=True, memory=True, disks=[dict(disk='root', volume_id='v1')])


def test_present_takes_a_new_snapshot_with_memory(engine, run_module):
    engine.answer = Outcome(True, SNAP)
    result = run_module(snapshot, dict(vm_name='vm1', description='before upgrade',
                                       use_memory=True))
    assert engine.calls == [('snapshots.create', ('vm1',), dict(
        snapshot_id='', description='before upgrade', use_memory=True, check_mode=False))]
    assert result['changed'] is True and result['snapshot']['quiesced'] is True


def test_present_with_an_id_looks_it_up(engine, run_module):
    engine.answer = Outcome(False, SNAP)
    result = run_module(snapshot, dict(vm_name='vm1', snapshot_id='s1',
                                       _ansible_check_mode=True))
    assert engine.calls[0][2]['snapshot_id'] == 's1' and engine.calls[0][2]['check_mode']
    assert result['changed'] is False


def test_restore_and_absent_name_the_snapshot(engine, run_module):
    engine.answer = Outcome(True, dict(SNAP, removed_snapshots=['s2']))
    result = run_module(snapshot, dict(vm_name='vm1', snapshot_id='s1', state='restore'))
    assert engine.calls[-1] == ('snapshots.restore', ('vm1', 's1'), dict(check_mode=False))
    assert result['snapshot']['removed_snapshots'] == ['s2']
    engine.answer = [SNAP]  # found, then what the merge returns
    result = run_module(snapshot, dict(vm_name='vm1', snapshot_id='s1', state='absent'))
    assert engine.calls[-2:] == [('snapshots.info', ('vm1',), dict(snapshot_id='s1')),
                                 ('snapshot_merge.delete', ('vm1', 's1'), {})]
    assert result['changed'] is True


def test_absent_of_a_missing_snapshot_changes_nothing(engine, run_module):
    engine.answer = []
    result = run_module(snapshot, dict(vm_name='vm1', snapshot_id='s9', state='absent'))
    assert result['changed'] is False and result['snapshot'] is None
    assert [call[0] for call in engine.calls] == ['snapshots.info']
    engine.answer = [SNAP]
    result = run_module(snapshot, dict(vm_name='vm1', snapshot_id='s1', state='absent',
                                       _ansible_check_mode=True))
    assert result['changed'] is True and engine.calls[-1][0] == 'snapshots.info'


def test_restore_and_absent_need_the_id(engine, run_module):
    for state in ('restore', 'absent'):
        result = run_module(snapshot, dict(vm_name='vm1', state=state))
        assert result['failed'] is True and 'snapshot_id' in result['msg']
    assert engine.calls == []


def test_a_refusal_fails_the_task_with_its_message(engine, run_module):
    engine.answer = FakeError('Conflict', "VM 'vm1' is Up: stop it first", vm='vm1')
    result = run_module(snapshot, dict(vm_name='vm1', snapshot_id='s1', state='restore'))
    assert result['failed'] is True and result['msg'] == "VM 'vm1' is Up: stop it first"


def test_info_filters(engine, run_module):
    engine.answer = [SNAP]
    result = run_module(snapshot_info, dict(vm_name='vm1', description='before upgrade'))
    assert engine.calls == [
        ('snapshots.info', ('vm1',), dict(snapshot_id='', description='before upgrade'))]
    assert result['snapshots'] == [SNAP] and result['changed'] is False
