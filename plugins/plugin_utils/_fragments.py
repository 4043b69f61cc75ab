# -*- coding: utf-8 -*-
# Copyright: kestrel.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""PRIVATE to kestrel.virt: not a public API, may change without notice.

One text for options a module takes at the top level and another module takes
as the suboptions of a list: kestrel.virt.disk's options are the items of
kestrel.virt.vm's ``disks``, kestrel.virt.nic's those of its ``nics``.

Ansible merges a doc fragment into a module one top-level option at a time,
so a fragment cannot add suboptions to an option documented elsewhere; the
list option's fragment has to carry its suboptions whole. ``as_suboptions``
writes them from the top-level fragment, so the two cannot drift apart.
"""

from __future__ import annotations

import re
import textwrap

_OPTION_REFERENCE = re.compile(r'\bO\(')


def as_suboptions(fragment, parent):
    """The options of ``fragment`` (a DOCUMENTATION text that holds only ``options``),
    indented to sit under ``options.<parent>.suboptions``.

    An ``O(x)`` in the text becomes ``O(<parent>[].x)``: the shared options may
    reference only each other.
    """
    head, found, options = fragment.partition('\noptions:\n')
    if not found or head.strip() or re.search(r'^\S', options, re.MULTILINE):
        raise ValueError('expected a fragment of options only')
    options = _OPTION_REFERENCE.sub('O(%s[].' % parent, options)
    return textwrap.indent(options, ' ' * 4)
