# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.modules import cluster
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import Outcome


def test_present_passes_unset_options_as_none_so_the_engine_keeps_them(engine, run_module):
    engine.answer = Outcome(True, dict(name='demo', memory_overcommit=150))
    result = run_module(cluster, dict(name='demo', memory_overcommit=150))
    assert engine.calls == [('clusters.ensure', ('demo',), dict(
        description=None, virt_type=None, memory_overcommit=150, mac_pool=None,
        scheduling_policy=None, scheduling_policy_properties=None, migration_policy=None,
        migration_bandwidth_mbps=None, migration_encrypted=None, ballooning=None,
        custom_properties=None, ha_reservation=None, fencing_policy=None, check_mode=False))]
    assert result['changed'] is True
    assert result['cluster']['memory_overcommit'] == 150


def test_migration_policy_and_bandwidth_reach_the_engine(engine, run_module):
    engine.answer = Outcome(True, dict(name='demo', migration_policy='post_copy'))
    run_module(cluster, dict(name='demo', migration_policy='post_copy', migration_bandwidth_mbps=500))
    assert engine.calls[0][2]['migration_policy'] == 'post_copy'
    assert engine.calls[0][2]['migration_bandwidth_mbps'] == 500


def test_custom_properties_reach_the_engine_as_given(engine, run_module):
    engine.answer = Outcome(True, dict(name='demo', custom_properties={'sap_agent': 'true|false'}))
    run_module(cluster, dict(name='demo', custom_properties={'sap_agent': 'true|false'}))
    assert engine.calls[0][2]['custom_properties'] == {'sap_agent': 'true|false'}


def test_ha_reservation_reaches_the_engine_and_its_check_comes_back(engine, run_module):
    engine.answer = Outcome(True, dict(name='demo', ha_reservation=True, ha_reservation_ok=False,
                                       ha_reservation_detail=dict(hosts=['h1'])))
    result = run_module(cluster, dict(name='demo', ha_reservation=True))
    assert engine.calls[0][2]['ha_reservation'] is True
    assert result['cluster']['ha_reservation_ok'] is False
    assert result['cluster']['ha_reservation_detail'] == dict(hosts=['h1'])


def test_absent_removes_and_returns_no_entity(engine, run_module):
    engine.answer = Outcome(True, None, dict(before=dict(name='demo'), after={}))
    result = run_module(cluster, dict(name='demo', state='absent'))
    assert engine.calls == [('clusters.remove', ('demo',), dict(check_mode=False))]
    assert result['changed'] is True
    assert result['cluster'] is None


def test_unknown_virt_type_is_refused_before_the_engine_is_opened(engine, run_module):
    result = run_module(cluster, dict(name='demo', virt_type='xen'))
    assert result['failed'] is True
    assert 'virt_type' in result['msg']
    assert engine.calls == [] and engine.opened_with == {}
