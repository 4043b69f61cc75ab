"""The thin-VM half of make bench-images: a VM from a template through the engine vs raw steps.

Engine side: ``engine.vms.ensure({name, template, clone: False, ...}, state="running")``
(spec from the template, overlay row, placement, render, the agent creating the
qcow2 overlay on the template's volume at start, define, create, the VM Up).
Raw side, inside the same lab host on the same storage domain: mkdir + ``qemu-img
create -f qcow2 -b ../<template image>/<template volume> -F qcow2`` + defineXML +
create of the same domain (the engine VM's persistent XML with new ids, name and
MAC) on a long-lived libvirt connection (bench/images/raw_thin.py).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import kestrel_lab

ROOT = Path(__file__).resolve().parents[2]


class RawThin:
    """bench/images/raw_thin.py inside a lab host, one JSON line per request."""

    def __init__(self, host_name: str, state_dir: str):
        argv = kestrel_lab.exec_argv(host_name, [sys.executable,
                                                 str(ROOT / "bench" / "images" / "raw_thin.py")],
                                     state_dir)
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)

    def call(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the raw helper in the lab host exited (status "
                               f"{self.process.wait()}); its stderr is above")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass  # it exited already
        self.process.wait(timeout=30)


def vm_spec(name: str, template: str) -> dict:
    """A thin VM of the template on lab host h1, booting the lab's tiny guest kernel."""
    return {"name": name, "template": template, "clone": False,
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img",
            "cmdline": "console=ttyS0", "placement": {"hosts": ["h1"]},
            "nics": [{"name": "nic1", "network": "kestrelmgmt"}]}


def engine_round(engine, name: str, template: str) -> tuple[float, dict]:
    started = time.perf_counter()
    entity = engine.vms.ensure(vm_spec(name, template), state="running").entity
    return time.perf_counter() - started, entity


def engine_remove(engine, name: str) -> None:
    engine.vms.ensure({"name": name}, state="absent")


class RawDomain:
    """The engine VM's persistent XML, re-keyed for one raw round at a time."""

    def __init__(self, xml: str, vm: dict):
        disk = vm["disks"][0]
        self.xml, self.vm_id, self.name = xml, vm["id"], vm["name"]
        self.image, self.volume = disk["image_id"], disk["volume_id"]

    def new(self, name: str) -> tuple[str, dict]:
        ids = {"id": str(uuid.uuid4()), "image": str(uuid.uuid4()), "volume": str(uuid.uuid4())}
        xml = (self.xml.replace(self.vm_id, ids["id"]).replace(self.image, ids["image"])
               .replace(self.volume, ids["volume"]))
        xml = re.sub(r"<name>[^<]*</name>", f"<name>{name}</name>", xml, count=1)
        # Without kestrel's metadata the host's agent takes it for a foreign domain.
        xml = re.sub(r"<metadata>.*?</metadata>", "", xml, count=1, flags=re.S)
        xml = re.sub(r"<mac address='[^']*'", lambda _m: f"<mac address='{_mac()}'", xml)
        return xml, ids


def _mac() -> str:
    return "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


def raw_round(raw: RawThin, domain: RawDomain, name: str, domain_dir: str,
              backing: str) -> tuple[float, dict]:
    xml, ids = domain.new(name)
    answer = raw.call(op="start", xml=xml, dir=domain_dir, image=ids["image"],
                      volume=ids["volume"], backing=backing, backing_format="qcow2")
    return answer["seconds"], ids
