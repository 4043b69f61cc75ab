"""The API process once started: what was alive then is out of the collector's reach, and
a list page's short-lived objects trigger no collection (its pauses set the pages' p95)."""

import subprocess
import sys

PROBE = """
import gc
from engine_lib.api import serve
serve.settle_gc()
frozen = gc.get_freeze_count()
pauses = []
gc.callbacks.append(lambda phase, info: pauses.append(info["generation"]))
# A page of 100 VMs: 1,200 dicts and lists alive at once (Python's default collects
# every 700), freed by reference counting.
for _ in range(300):
    page = [{"name": f"vm-{n}", "devices": [{"alias": f"d{i}"} for i in range(10)]}
            for n in range(100)]
print(frozen, len(pauses))
"""


def test_settle_gc_freezes_startup_objects_and_pages_trigger_no_collection():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    frozen, collections = int(out[0]), int(out[1])
    assert frozen > 10_000  # the modules, FastAPI and SQLAlchemy imported by serve
    assert collections == 0
