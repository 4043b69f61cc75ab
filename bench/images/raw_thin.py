"""The raw side of make bench-images' thin VM, run inside the lab host next to the agent.

Reads one JSON request per line on stdin, answers one JSON line on stdout:
  {"op": "xml", "id": uuid}          the domain's persistent (inactive) XML
  {"op": "start", "xml", "dir", "image", "volume", "backing", "backing_format"}
                                     time mkdir <dir>/<image> + ``qemu-img create -f qcow2
                                     -b <backing> -F <fmt>`` + defineXML + create
                                     -> {"seconds": s}
  {"op": "remove", "id", "dir", "image"}   destroy + undefine + the overlay (untimed)
The libvirt connection is opened once, before any timing, as a long-lived agent's is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import libvirt

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def start(conn: libvirt.virConnect, request: dict) -> dict:
    begin = time.perf_counter()
    image_dir = os.path.join(request["dir"], request["image"])
    os.mkdir(image_dir)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", request["backing"],
                    "-F", request["backing_format"],
                    os.path.join(image_dir, request["volume"])], check=True)
    dom = conn.defineXML(request["xml"])
    dom.create()
    return {"seconds": time.perf_counter() - begin}


def remove(conn: libvirt.virConnect, request: dict) -> dict:
    dom = conn.lookupByUUIDString(request["id"])
    if dom.isActive():
        dom.destroy()
    dom.undefine()
    shutil.rmtree(os.path.join(request["dir"], request["image"]))
    return {}


def main() -> None:
    conn = libvirt.open("qemu:///system")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "xml":
                answer = {"xml": conn.lookupByUUIDString(request["id"]).XMLDesc(
                    libvirt.VIR_DOMAIN_XML_INACTIVE)}
            elif request["op"] == "start":
                answer = start(conn, request)
            elif request["op"] == "remove":
                answer = remove(conn, request)
            else:
                answer = {"error": f"unknown op {request['op']!r}"}
        except (libvirt.libvirtError, OSError, subprocess.CalledProcessError) as exc:
            answer = {"error": str(exc)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
