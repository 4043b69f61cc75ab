"""kestrel.virt engine library.

Kept import-light on purpose: the host agent imports ``engine_lib.agent``,
which must load with only the standard library and libvirt-python.
"""

__version__ = "0.1.0"
