"""Upload of an image through the agent's HTTPS server vs ``qemu-img convert`` of the same
file on the same storage, and the agent's peak memory meanwhile.

    python -m bench.images.upload [--size-mib 1024] [--format raw|qcow2] [--dir DIR]

The agent runs in a process of its own (its VmHWM is the upload path's peak
memory); the client streams the file in 1 MiB pieces and hashes it as it
reads, as the engine does. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from engine_lib import pki
from engine_lib.broker import client_context

MIB = 1024 * 1024

_AGENT = """
import sys, threading
from engine_lib.agent.api import Api
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.server import AgentServer, server_context
where, domain = sys.argv[1], sys.argv[2]
config = AgentConfig(name="bench", address="127.0.0.1", port=0, libvirt_uri="test:///default",
                     ca=f"{where}/ca.pem", cert=f"{where}/agent.pem", key=f"{where}/agent.key",
                     source="bench", storage_domains={"sd": domain})
server = AgentServer(config, server_context(config), Api(config))
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the process used so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _call(conn, method, path, body=None):
    conn.request(method, "/api/v1" + path, json.dumps(body).encode() if body else b"",
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    return json.loads(response.read())


def _upload(port, context, path, fmt) -> tuple[float, dict]:
    length = os.path.getsize(path)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=300)
    started = time.monotonic()
    job = _call(conn, "POST", "/images/uploads", {
        "volume": {"domain": "sd", "image": "up", "volume": "vol", "format": fmt},
        "length": length, "image_format": fmt})["job"]
    conn.putrequest("PUT", f"/api/v1/images/uploads/{job}")
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(MIB):
            digest.update(piece)
            conn.send(piece)
    conn.getresponse().read()
    _call(conn, "POST", f"/images/uploads/{job}/commit", {"sha256": digest.hexdigest()})
    while True:  # the engine polls like this too
        report = _call(conn, "GET", f"/jobs/{job}")
        if report["status"] != "running":
            break
        time.sleep(0.05)
    conn.close()
    return time.monotonic() - started, report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--format", choices=["raw", "qcow2"], default="raw")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-images-", dir=args.dir)
    try:
        pki_dir = os.path.join(work, "pki")
        pki.init_ca(pki_dir)
        key, cert = pki.issue(pki_dir, "agent", ["127.0.0.1"])
        with open(os.path.join(pki_dir, "agent.key"), "wb") as handle:
            handle.write(key)
        with open(os.path.join(pki_dir, "agent.pem"), "wb") as handle:
            handle.write(cert)
        domain = os.path.join(work, "sd")
        os.mkdir(domain)
        raw = os.path.join(work, "image.raw")
        with open(raw, "wb") as handle:  # half random, half zeros: a used disk
            for index in range(args.size_mib):
                handle.write(os.urandom(MIB) if index % 2 == 0 else b"\0" * MIB)
        image = raw
        if args.format == "qcow2":
            image = os.path.join(work, "image.qcow2")
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, image],
                           check=True)
        subprocess.run(["sync"], check=True)

        started, cpu = time.monotonic(), _children_cpu_s()
        subprocess.run(["qemu-img", "convert", "-f", args.format, "-O", args.format, image,
                        os.path.join(domain, "converted")], check=True)
        convert_s, convert_cpu = time.monotonic() - started, _children_cpu_s() - cpu

        agent = subprocess.Popen([sys.executable, "-c", _AGENT, pki_dir, domain],
                                 stdout=subprocess.PIPE, text=True)
        try:
            port = int(agent.stdout.readline())
            cpu = _cpu_s(agent.pid)
            upload_s, report = _upload(port, client_context(pki_dir), image, args.format)
            peak, agent_cpu = _peak_rss_mib(agent.pid), _cpu_s(agent.pid) - cpu
        finally:
            agent.terminate()
            agent.wait()
        assert report["status"] == "succeeded", report
        result = {"bench": "images-upload", "size_mib": args.size_mib,
                  "format": args.format, "upload_s": round(upload_s, 2),
                  "qemu_img_convert_s": round(convert_s, 2),
                  "upload_vs_convert": round(convert_s / upload_s, 2),
                  "agent_peak_rss_mib": round(peak, 1),
                  # CPU seconds: comparable on a loaded machine where wall time is not.
                  "agent_cpu_s": round(agent_cpu, 2),
                  "qemu_img_convert_cpu_s": round(convert_cpu, 2),
                  "load_average": os.getloadavg()[0]}
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
