# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.modules import stats_info
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import FakeError

STATS = dict(kind='host', name='h1', current=dict(cpu_percent=41.7), resolution='hour',
             since='2026-11-29T18:00:00+00:00', until='2026-12-06T18:00:00+00:00',
             samples=[dict(at='2026-12-06T17:00:00+00:00', samples=60, cpu_percent=38.2)])


def test_a_host_window_is_passed_and_returned_unchanged(engine, run_module):
    engine.answer = STATS
    result = run_module(stats_info, dict(host='h1', period='7d'))
    assert engine.calls == [('stats.host', ('h1',), dict(
        period='7d', since=None, until=None, resolution=None))]
    assert result['changed'] is False
    assert result['statistics'] == STATS


def test_a_vm_in_check_mode(engine, run_module):
    engine.answer = dict(STATS, kind='vm', name='vm1')
    result = run_module(stats_info, dict(vm='vm1', since='2026-12-06T13:00:00', resolution='raw',
                                         _ansible_check_mode=True))
    assert engine.calls == [('stats.vm', ('vm1',), dict(
        period=None, since='2026-12-06T13:00:00', until=None, resolution='raw'))]
    assert result['statistics']['kind'] == 'vm'


def test_one_of_host_and_vm(engine, run_module):
    assert 'one of the following is required: host, vm' in run_module(stats_info, dict())['msg']
    both = run_module(stats_info, dict(host='h1', vm='vm1'))
    assert both['failed'] and 'mutually exclusive: host|vm' in both['msg']
    assert engine.calls == []


def test_a_bad_period_fails_naming_it(engine, run_module):
    engine.answer = FakeError('InvalidSpec', "period: must be a number and a unit (m, h, d, w "
                              "or y), such as 1h, 24h, 7d, 30d or 1y; got 'soon'",
                              field='period', reason='...')
    result = run_module(stats_info, dict(host='h1', period='soon'))
    assert result['failed'] is True
    assert result['msg'].startswith('period: ')
    assert result['error']['details']['field'] == 'period'
