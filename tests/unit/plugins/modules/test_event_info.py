# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.kestrel.virt.plugins.modules import event_info

EVENTS = [dict(id=7, time='2026-12-06T18:00:00+00:00', severity='info', entity_type='vm',
               entity_name='vm1', message='VM vm1 is Up', user='alice', token_id='t1')]


def test_the_user_filter_is_passed_and_entries_keep_who_acted(engine, run_module):
    engine.answer = EVENTS
    result = run_module(event_info, dict(user='alice', entity_type='vm'))
    assert engine.calls == [('events.info', (), dict(
        entity_type='vm', entity_name=None, severity=None, user='alice', after_id=0,
        limit=100))]
    assert result['events'][0]['user'] == 'alice'
    assert result['events'][0]['token_id'] == 't1'
