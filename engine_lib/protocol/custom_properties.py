"""How a VM's custom properties are named, and how they reach hook scripts.

A custom property is a string a VM carries for the host's hooks (oVirt's
UserDefinedVMProperties). The engine lets a VM set only the names its cluster's
administrator allowed; the agent hands them to hooks (which run as root) as
``KESTREL_PROP_<name>`` environment variables, never under their own names: a
VM owner must not be able to set ``BASH_ENV``, ``PERL5OPT`` or ``LD_PRELOAD``
for root, and no program reads a variable of that prefix.

Shared by engine and agent; standard library only.
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
NAME_RULE = "1-64 lowercase letters, digits and '_', starting with a letter"
ENV_PREFIX = "KESTREL_PROP_"


def is_name(value: object) -> bool:
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def env_name(name: str) -> str:
    """The environment variable a hook reads property ``name`` from."""
    return ENV_PREFIX + name
