# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):

    # How every kestrel.virt module reaches the engine. Modules run where the
    # engine runs (the controller or an engine host), like ovirt.ovirt's.
    DOCUMENTATION = r"""
options:
  engine_dir:
    description:
      - The engine directory, holding the engine's CA and TLS client
        certificate (C(pki/)) and the default SQLite database (C(engine.db)).
      - Create it with the C(kestrel.virt.engine) role or C(kestrel engine init).
      - If not set, the environment variable E(KESTREL_ENGINE_DIR) is used,
        then C(/var/lib/kestrel/engine).
    type: path
  db_url:
    description:
      - SQLAlchemy URL of the engine database, for example
        C(postgresql+psycopg://kestrel@db.example.com/kestrel).
      - If not set, the environment variable E(KESTREL_DB_URL) is used, then
        the SQLite file C(engine.db) in O(engine_dir).
    type: str
requirements:
  - python >= 3.11
  - kestrel-engine (the engine library) where the module runs
notes:
  - Set the connection once for every module with
    C(module_defaults) and the action group C(group/kestrel.virt.kestrel).
"""

    ATTRIBUTES = r"""
attributes:
  action_group:
    description: Use C(group/kestrel.virt.kestrel) in C(module_defaults) to set common options for all kestrel.virt modules.
    support: full
    membership:
      - kestrel.virt.kestrel
  platform:
    description: Runs where the engine runs, usually the Ansible controller.
    support: full
    platforms: posix
"""
