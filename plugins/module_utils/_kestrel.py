# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""PRIVATE to kestrel.virt: not a public API, may change without notice.

The one wrapper between Ansible modules and the engine. It guards the import
of ``engine_lib``, opens the engine, runs exactly one call, and turns the result
into ``exit_json`` or a typed engine error into ``fail_json``. Modules stay
argument specs plus one call.

Two ways to reach the engine: remote (``engine_url`` with a token or a username
and password: the engine API over HTTPS; the controller holds no engine keys and
needs only the standard-library client) or local (``engine_dir``/``db_url``: the
engine library opens the database itself, on the engine host). The engine
library proper (SQLAlchemy, the services) is imported only in local mode.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from contextlib import contextmanager

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

try:
    from engine_lib.protocol.errors import KestrelError
except ImportError:
    ENGINE_IMPORT_ERROR = traceback.format_exc()

    class KestrelError(Exception):  # type: ignore[no-redef]
        """Stand-in so ``except KestrelError`` stays valid without engine_lib."""
else:
    ENGINE_IMPORT_ERROR = None

# Imported on first use, by mode (tests put fakes here).
Engine = None
RemoteEngine = None

LOCAL_OPTIONS = ('engine_dir', 'db_url')
REMOTE_OPTIONS = ('engine_url', 'username', 'password', 'token', 'ca_file')

ENGINE_ARGUMENT_SPEC = dict(
    engine_url=dict(type='str', fallback=(env_fallback, ['KESTREL_ENGINE_URL'])),
    username=dict(type='str', fallback=(env_fallback, ['KESTREL_USERNAME'])),
    password=dict(type='str', no_log=True, fallback=(env_fallback, ['KESTREL_PASSWORD'])),
    token=dict(type='str', no_log=True, fallback=(env_fallback, ['KESTREL_TOKEN'])),
    ca_file=dict(type='path', fallback=(env_fallback, ['KESTREL_CA_FILE'])),
    engine_dir=dict(type='path', fallback=(env_fallback, ['KESTREL_ENGINE_DIR'])),
    db_url=dict(type='str', no_log=True, fallback=(env_fallback, ['KESTREL_DB_URL'])),
)


def connection_problem(options):
    """Why these connection options cannot be used together, or None.

    ``options`` maps the names above to their values (None when unset).
    """
    given = [name for name in REMOTE_OPTIONS + LOCAL_OPTIONS if options.get(name)]
    remote = [name for name in given if name in REMOTE_OPTIONS]
    local = [name for name in given if name in LOCAL_OPTIONS]
    if remote and local:
        return ('%s (the engine API) and %s (the engine host\'s own database) are mutually '
                'exclusive: set engine_url with username/password or token, or engine_dir/db_url '
                'on the engine host, not both (check module_defaults and the KESTREL_* '
                'environment variables)' % ('/'.join(remote), '/'.join(local)))
    if remote and not options.get('engine_url'):
        return '%s given without engine_url' % '/'.join(remote)
    if not options.get('engine_url'):
        return None
    if options.get('token') and (options.get('username') or options.get('password')):
        return 'token and username/password are mutually exclusive'
    if not options.get('token') and not (options.get('username') and options.get('password')):
        return 'engine_url needs token, or username and password'
    return None


@contextmanager
def open_engine(options):
    """The engine these connection options name, remote or local; closed afterwards.

    ``connection_problem(options)`` must be None. Raises ImportError when the
    library the mode needs is missing, KestrelError from the engine.
    """
    global Engine, RemoteEngine
    if options.get('engine_url'):
        if RemoteEngine is None:
            from engine_lib.client import RemoteEngine
        # An AWX injector sets unused fields to '': unset, as for connection_problem().
        given = dict((name, options.get(name) or None) for name in REMOTE_OPTIONS)
        with RemoteEngine.connect(given['engine_url'], username=given['username'],
                                  password=given['password'], token=given['token'],
                                  ca_file=given['ca_file']) as engine:
            yield engine
        return
    if Engine is None:
        from engine_lib.engine import Engine
    engine_dir, private_dir = options.get('engine_dir'), None
    if engine_dir is None and options.get('db_url'):
        engine_dir = private_dir = pki_from_environment()
    try:
        with Engine.open(engine_dir=engine_dir, db_url=options.get('db_url')) as engine:
            yield engine
    finally:
        if private_dir is not None:
            shutil.rmtree(private_dir, ignore_errors=True)


# AWX's credential injectors write each file to a temporary path of its own;
# these variables name them (docs/awx.md), so a job needs no engine directory.
PKI_ENV = (('KESTREL_ENGINE_CA', 'ca.pem'), ('KESTREL_ENGINE_CERT', 'engine.pem'),
           ('KESTREL_ENGINE_KEY', 'engine.key'))


def pki_from_environment():
    """A private engine directory whose pki/ links the credential's files, or None.

    Used only when neither engine_dir nor KESTREL_ENGINE_DIR is set and all
    three variables are; the caller removes the directory afterwards.
    """
    paths = [(os.environ.get(var), name) for var, name in PKI_ENV]
    if not all(path for path, _name in paths):
        return None
    directory = tempfile.mkdtemp(prefix='kestrel-engine-')
    os.mkdir(os.path.join(directory, 'pki'), 0o700)
    for path, name in paths:
        os.symlink(path, os.path.join(directory, 'pki', name))
    return directory


def drop_unset(value):
    """Remove the keys Ansible filled with None, recursively.

    Ansible gives every option and sub-option a key; the engine treats an
    absent key as "keep the current value" (or use its default), so options
    the user did not set must not reach it at all.
    """
    if isinstance(value, dict):
        return dict((key, drop_unset(item)) for key, item in value.items() if item is not None)
    if isinstance(value, list):
        return [drop_unset(item) for item in value]
    return value


class KestrelModule(AnsibleModule):
    """An AnsibleModule that talks to the kestrel engine.

    ``entity_key`` names the result key that carries the resulting entity
    (``cluster``, ``host``, ``vm``), so playbooks read ``result.vm.id``.
    """

    def __init__(self, argument_spec, entity_key=None, secrets=None, **kwargs):
        # ``secrets(params)`` lists the secret values inside free-form options (a console
        # password in a raw ``graphics``), which no_log cannot reach.
        self._secrets = secrets
        spec = dict(ENGINE_ARGUMENT_SPEC)
        spec.update(argument_spec)
        kwargs.setdefault('supports_check_mode', True)
        super().__init__(argument_spec=spec, **kwargs)
        self._hide_secrets()
        self.entity_key = entity_key
        if ENGINE_IMPORT_ERROR is not None:
            self.fail_json(msg=missing_required_lib('kestrel-engine'), exception=ENGINE_IMPORT_ERROR)
        problem = connection_problem(self.params)
        if problem is not None:
            self.fail_json(msg=problem)

    def _hide_secrets(self):
        for value in (self._secrets(self.params) if self._secrets else ()):
            if value not in (None, ''):
                self.no_log_values.add(str(value))

    def _log_invocation(self):
        self._hide_secrets()  # before the invocation reaches syslog
        # That log prints a dict option with str(): a secret sub-option with a newline (a
        # user-data document) shows there escaped, so its escaped form is hidden too.
        for value in list(self.no_log_values):
            escaped = repr(value)[1:-1]
            if escaped != value:
                self.no_log_values.add(escaped)
        super()._log_invocation()

    def _call_engine(self, call):
        """Open the engine, run ``call(engine)``, close; typed errors fail the task."""
        try:
            with open_engine(self.params) as engine:
                return call(engine)
        except KestrelError as err:
            self.fail_json(msg=err.message, error=err.to_dict())
        except ImportError:
            # The remote client is standard library only: this is local mode's engine.
            self.fail_json(msg=missing_required_lib('kestrel-engine with its engine '
                                                    'dependencies (local mode: engine_dir/db_url)'),
                           exception=traceback.format_exc())

    def apply(self, call):
        """Run a change ``call(engine, check_mode)`` returning an Outcome, then exit.

        Check mode is passed down, not simulated here: the engine predicts the
        very entity and diff the real run would produce.
        """
        outcome = self._call_engine(lambda engine: call(engine, self.check_mode))
        result = dict(changed=outcome.changed)
        result[self.entity_key] = outcome.entity
        if self._diff and outcome.diff is not None:
            result['diff'] = outcome.diff
        self.exit_json(**result)

    def query(self, result_key, call):
        """Run a read-only ``call(engine)`` and exit with its value under ``result_key``."""
        self.exit_json(changed=False, **{result_key: self._call_engine(call)})
