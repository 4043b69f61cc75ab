"""The bare-libvirt side of make bench-agent, run inside the lab host next to the agent.

Reads one JSON request per line on stdin, answers one JSON line on stdout:
  {"op": "start", "xml": ...}       resolve like the agent (untimed), then time
                                    defineXML + create -> {"seconds": s, "id": uuid}
  {"op": "remove", "id": ...}       destroy + undefine (untimed)
  {"op": "stats", "groups": g}      time one getAllDomainStats(g, ACTIVE) -> {"seconds", "vms"}
The connection is opened once, before any timing, as a long-lived agent's is.
"""

from __future__ import annotations

import json
import sys
import time

import libvirt

from engine_lib.agent import config, domxml

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def main() -> None:
    agent_config = config.load(sys.argv[1])
    conn = libvirt.open("qemu:///system")
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            host = domxml.resolve(request["xml"], agent_config.paths,
                                  agent_config.storage_domains)
            begin = time.perf_counter()
            dom = conn.defineXML(host.xml)
            dom.create()
            answer = {"seconds": time.perf_counter() - begin, "id": host.uuid}
        elif request["op"] == "remove":
            dom = conn.lookupByUUIDString(request["id"])
            if dom.isActive():
                dom.destroy()
            dom.undefine()
            answer = {}
        elif request["op"] == "stats":
            begin = time.perf_counter()
            records = conn.getAllDomainStats(request["groups"],
                                             libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
            answer = {"seconds": time.perf_counter() - begin, "vms": len(records)}
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
