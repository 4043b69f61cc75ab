"""What a controller needs for the API client: the standard library and nothing else (the
execution environment holds no database driver, and the engine's other dependencies may
be missing there)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import engine_lib.client
import engine_lib.client.transfers
base = set(sys.stdlib_module_names) | {"engine_lib", "__main__", "_distutils_hack", "sitecustomize"}
found = {name.split(".")[0] for name in sys.modules} - base
print(" ".join(sorted(n for n in found if not n.startswith("__editable__"))))  # pip -e hooks
"""


def test_the_client_imports_only_the_standard_library():
    found = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                           check=True).stdout.split()
    assert found == []
