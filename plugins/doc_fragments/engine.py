# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):

    # How every kestrel.virt module reaches the engine: through its API
    # (engine_url, from any controller or AWX job), or on the engine host
    # itself through its database (engine_dir, db_url).
    DOCUMENTATION = r"""
options:
  engine_url:
    description:
      - URL of the engine API (C(kestrel engine serve)), for example
        C(https://engine.example.com:8443). The module then talks to the
        engine over HTTPS as the user O(username) (or the owner of O(token));
        the controller needs neither the engine's keys nor its database.
      - Mutually exclusive with O(engine_dir) and O(db_url).
      - If not set, the environment variable E(KESTREL_ENGINE_URL) is used.
    type: str
  username:
    description:
      - The engine user to log in as, with O(password). The login's token is
        revoked when the task ends.
      - If not set, the environment variable E(KESTREL_USERNAME) is used.
    type: str
  password:
    description:
      - The password of O(username).
      - If not set, the environment variable E(KESTREL_PASSWORD) is used.
    type: str
  token:
    description:
      - An API token (C(kst_...)) made with M(kestrel.virt.token) or
        C(kestrel token create), instead of O(username) and O(password).
        It can do at most what its user may, narrowed to its role if it has one.
      - If not set, the environment variable E(KESTREL_TOKEN) is used.
    type: str
  ca_file:
    description:
      - The CA certificate that signed the engine API's certificate (the
        engine's C(pki/ca.pem)). The server must present a certificate for the
        host name of O(engine_url) with the API profile (OU=api).
      - If not set, the environment variable E(KESTREL_CA_FILE) is used, then
        the system's trusted CAs.
    type: path
  engine_dir:
    description:
      - On the engine host only. The engine directory, holding the engine's CA
        and TLS client certificate (C(pki/)) and the default SQLite database
        (C(engine.db)).
      - Create it with the C(kestrel.virt.engine) role or C(kestrel engine init).
      - If not set, the environment variable E(KESTREL_ENGINE_DIR) is used,
        then (without O(engine_url)) C(/var/lib/kestrel/engine).
    type: path
  db_url:
    description:
      - On the engine host only. SQLAlchemy URL of the engine database, for
        example C(postgresql+psycopg://kestrel@db.example.com/kestrel).
      - If not set, the environment variable E(KESTREL_DB_URL) is used, then
        the SQLite file C(engine.db) in O(engine_dir).
    type: str
requirements:
  - python >= 3.11
  - kestrel-engine (the engine library) where the module runs; with
    O(engine_url) only its standard-library client is used
notes:
  - Set the connection once for every module with
    C(module_defaults) and the action group C(group/kestrel.virt.kestrel).
  - Remote (O(engine_url)) and local (O(engine_dir), O(db_url)) options,
    whether given or from the environment, cannot be mixed.
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
