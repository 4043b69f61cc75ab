"""make bench-xml: how fast the engine renders domain XML, measured side by side.

The reference VM is the 'everything' golden case (about 20 devices). Three
figures in one run on one machine:
  - render: viewmodel.build + the Jinja2 template, from the VM entity to text;
  - lxml round trip: parsing and serializing that same text, the floor for
    producing it in Python;
  - virtinst: virt-manager's object model building the same domain, in a
    /usr/bin/python3 subprocess that times its own loop (Debian's virtinst
    exists only for the system Python).
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from lxml import etree

from engine_lib.domxml import render
from engine_lib.services.vm_config import build_offline
from engine_lib.spec import normalize_vm

ROOT = Path(__file__).resolve().parents[2]
RUNS = 3000


def median_us(func, runs: int = RUNS) -> float:
    for _warmup in range(100):  # warm up caches and the template
        func()
    times = []
    for _run in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> int:
    cases = yaml.safe_load((ROOT / "tests/lib/golden/cases.yaml").read_text())
    vm = build_offline(normalize_vm(cases["everything"]["spec"]), "kvm")
    xml = render(vm)
    devices = len(etree.fromstring(xml.encode()).find("devices"))
    render_us = median_us(lambda: render(vm))
    data = xml.encode()
    lxml_us = median_us(lambda: etree.tostring(etree.fromstring(data)))
    proc = subprocess.run(["/usr/bin/python3", str(ROOT / "bench/xml/virtinst_build.py"), "200"],
                          capture_output=True, text=True, check=True)
    virtinst_us = json.loads(proc.stdout.strip().splitlines()[-1])["median_us"]

    print(f"reference VM: {devices} devices, {len(data)} bytes of domain XML")
    print(f"engine render (view-model + Jinja2), median of {RUNS}: {render_us:9.1f} us")
    print(f"lxml parse + serialize, median of {RUNS}:             {lxml_us:9.1f} us")
    print(f"virtinst object model build, median of 200:           {virtinst_us:9.1f} us")
    ratio, speedup = render_us / lxml_us, virtinst_us / render_us
    print(f"render / lxml round trip: {ratio:.2f}x (goal <= 3x)")
    print(f"virtinst / render:        {speedup:.0f}x faster (goal >= 50x)")
    print(json.dumps({"render_median_us": round(render_us, 1), "lxml_median_us": round(lxml_us, 1),
                      "virtinst_median_us": round(virtinst_us, 1),
                      "lxml_roundtrip_ratio": round(ratio, 2), "virtinst_speedup": round(speedup, 1),
                      "devices": devices, "xml_bytes": len(data)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
