"""The raw halves of make bench-snapshots, run inside the lab host next to the agent.

Reads one JSON request per line on stdin, answers one JSON line on stdout:
  {"op": "run", "argv": [...]}       run a command (virsh, qemu-img) -> {"seconds", "stdout"}
  {"op": "write", "id", "device", "offsets": [...], "length", "seed"}
                                     the guest writes ``length`` bytes of random data at
                                     each offset of its block device through qemu-guest-agent
                                     (one handle; closing it flushes the device) -> {"bytes"}
  {"op": "read", "id", "device", "offset", "length"}   -> {"b64"}
  {"op": "ping", "id"}               the guest agent answers -> {}
Commands are timed here, inside the host, so the figures carry no namespace-entering cost;
the libvirt connection is opened once, before any timing.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import time

import libvirt
import libvirt_qemu

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# qemu-guest-agent reads a command line of at most this many bytes of base64.
CHUNK = 48 * 1024


def qga(conn: libvirt.virConnect, vm_id: str, command: str, **arguments) -> object:
    reply = libvirt_qemu.qemuAgentCommand(conn.lookupByUUIDString(vm_id), json.dumps(
        {"execute": command, "arguments": arguments}), 30, 0)
    return json.loads(reply)["return"]


def write(conn: libvirt.virConnect, request: dict) -> dict:
    rng = random.Random(request["seed"])
    handle = qga(conn, request["id"], "guest-file-open", path=request["device"], mode="r+")
    written = 0
    try:
        for offset in request["offsets"]:
            qga(conn, request["id"], "guest-file-seek", handle=handle, offset=offset, whence=0)
            left = request["length"]
            while left:
                data = rng.randbytes(min(CHUNK, left))
                qga(conn, request["id"], "guest-file-write", handle=handle,
                    **{"buf-b64": base64.b64encode(data).decode()})
                left -= len(data)
                written += len(data)
    finally:
        qga(conn, request["id"], "guest-file-close", handle=handle)
    return {"bytes": written}


def read(conn: libvirt.virConnect, request: dict) -> dict:
    handle = qga(conn, request["id"], "guest-file-open", path=request["device"], mode="r")
    try:
        qga(conn, request["id"], "guest-file-seek", handle=handle, offset=request["offset"],
            whence=0)
        data = qga(conn, request["id"], "guest-file-read", handle=handle,
                   count=request["length"])
    finally:
        qga(conn, request["id"], "guest-file-close", handle=handle)
    return {"b64": data["buf-b64"]}


def run(request: dict) -> dict:
    begin = time.perf_counter()
    done = subprocess.run(request["argv"], capture_output=True, text=True, check=True)
    return {"seconds": time.perf_counter() - begin, "stdout": done.stdout}


def main() -> None:
    conn = libvirt.open("qemu:///system")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "run":
                answer = run(request)
            elif request["op"] == "write":
                answer = write(conn, request)
            elif request["op"] == "read":
                answer = read(conn, request)
            elif request["op"] == "ping":
                qga(conn, request["id"], "guest-ping")
                answer = {}
            else:
                answer = {"error": f"unknown op {request['op']!r}"}
        except subprocess.CalledProcessError as exc:
            answer = {"error": f"{exc.cmd[0]} failed ({exc.returncode}): {exc.stderr.strip()}"}
        except (libvirt.libvirtError, OSError, KeyError, ValueError) as exc:
            answer = {"error": str(exc)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
