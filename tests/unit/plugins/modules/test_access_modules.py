# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The user, group, permission and token modules: which engine call, with which
arguments, and what never reaches the result."""

from __future__ import annotations

import pytest
from ansible_collections.kestrel.virt.plugins.modules import group, permission, token, user
from ansible_collections.kestrel.virt.tests.unit.plugins.modules.kestrel_fakes import Outcome

API = dict(engine_url='https://engine:8443', token='kst_1_admin')


def test_user_password_is_set_on_create_and_never_echoed(engine, run_module):
    engine.answer = Outcome(True, dict(name='alice', enabled=True))
    result = run_module(user, dict(API, name='alice', user_password='correct horse battery',
                                   email='alice@example.com', _ansible_check_mode=True))
    assert not result.get('failed'), result
    assert engine.calls == [('users.ensure', ('alice',), dict(
        password='correct horse battery', update_password='on_create', description=None,
        email='alice@example.com', enabled=None, check_mode=True))]
    assert 'correct horse' not in repr(result)
    assert result['user'] == dict(name='alice', enabled=True)


def test_the_login_password_is_not_the_new_users(engine, run_module):
    engine.answer = Outcome(True, dict(name='alice'))
    run_module(user, dict(engine_url='https://engine:8443', username='admin',
                          password='the admin password', name='alice'))
    assert engine.opened_with['password'] == 'the admin password'
    assert engine.calls[0][2]['password'] is None


def test_user_absent_removes_it(engine, run_module):
    engine.answer = Outcome(True, None)
    result = run_module(user, dict(API, name='alice', state='absent'))
    assert engine.calls == [('users.remove', ('alice',), dict(check_mode=False))]
    assert result['user'] is None


def test_group_members_replace_the_current_ones(engine, run_module):
    engine.answer = Outcome(True, dict(name='ops', users=['alice', 'bob']),
                            dict(before=dict(users=['alice']), after=dict(users=['alice', 'bob'])))
    result = run_module(group, dict(API, name='ops', users=['bob', 'alice'], _ansible_diff=True))
    assert engine.calls == [('groups.ensure', ('ops',), dict(
        users=['bob', 'alice'], description=None, check_mode=False))]
    assert result['diff']['after'] == dict(users=['alice', 'bob'])
    run_module(group, dict(API, name='ops', state='absent'))
    assert engine.calls[-1] == ('groups.remove', ('ops',), dict(check_mode=False))


def test_permission_takes_ovirt_permission_names(engine, run_module):
    engine.answer = Outcome(True, dict(role='VmOperator', group='ops'))
    run_module(permission, dict(API, role='VmOperator', group_name='ops', object_type='cluster',
                                object_name='production'))
    run_module(permission, dict(API, role='ReadOnly', user='bob', state='absent'))
    assert engine.calls == [
        ('permissions.ensure', (), dict(role='VmOperator', user=None, group='ops',
                                        object_type='cluster', object_name='production',
                                        state='present', check_mode=False)),
        ('permissions.ensure', (), dict(role='ReadOnly', user='bob', group=None,
                                        object_type='system', object_name='', state='absent',
                                        check_mode=False)),
    ]


@pytest.mark.parametrize('args, message', [
    (dict(role='ReadOnly'), 'one of the following is required: user_name, group_name'),
    (dict(role='ReadOnly', user_name='a', group_name='g'),
     'parameters are mutually exclusive: user_name|group_name'),
    (dict(role='ReadOnly', user_name='a', object_type='vm'),
     'object_type is vm but all of the following are missing: object_name'),
    (dict(role='ReadOnly', user_name='a', object_name='web1'),
     'object_name: must be empty for object_type system'),
    (dict(role='ReadOnly', user_name='a', object_type='datacenter', object_name='d'),
     'value of object_type must be one of'),
])
def test_permission_refuses_incomplete_grants(engine, run_module, args, message):
    result = run_module(permission, dict(API, **args))
    assert result['failed'] is True
    assert message in result['msg']
    assert engine.calls == []


def test_a_new_token_is_returned_once(engine, run_module):
    engine.answer = Outcome(True, dict(name='ci', user='ci', role='VmOperator',
                                       token='kst_7_newsecret'))
    result = run_module(token, dict(API, name='ci', user='ci', role='VmOperator',
                                    expires_in=3600))
    assert engine.calls == [('tokens.create', (), dict(
        name='ci', user='ci', role='VmOperator', expires_in=3600, check_mode=False))]
    assert result['token']['token'] == 'kst_7_newsecret'


def test_an_existing_token_is_not_shown_again(engine, run_module):
    engine.answer = Outcome(False, dict(name='ci', user='ci', role=''))
    result = run_module(token, dict(API, name='ci'))
    assert engine.calls == [('tokens.create', (), dict(name='ci', user=None, check_mode=False))]
    assert 'token' not in result['token']


def test_token_absent_revokes_it(engine, run_module):
    engine.answer = Outcome(True, dict(name='ci', revoked=True))
    run_module(token, dict(API, name='ci', user='ci', state='absent', _ansible_check_mode=True))
    assert engine.calls == [('tokens.revoke', (), dict(name='ci', user='ci', check_mode=True))]


@pytest.mark.parametrize('args, message', [
    (dict(expires_in=0), 'expires_in: must be a positive number of seconds'),
    (dict(expires_in=60, expires='2030-01-01T00:00:00Z'),
     'parameters are mutually exclusive: expires_in|expires'),
])
def test_token_refuses_bad_expiry(engine, run_module, args, message):
    result = run_module(token, dict(API, name='ci', **args))
    assert result['failed'] is True and message in result['msg']
    assert engine.calls == []


def test_a_predicted_token_has_no_text(engine, run_module):
    engine.answer = Outcome(True, dict(name='ci', token='kst_7_never_stored'))
    result = run_module(token, dict(API, name='ci', _ansible_check_mode=True))
    assert result['changed'] and 'token' not in result['token']
