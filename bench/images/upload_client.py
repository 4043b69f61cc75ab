"""The engine's side of one upload, in a process of its own (its VmHWM is the client's peak).

    python -m bench.images.upload_client PKI_DIR ADDRESS PORT PATH VOLUME_JSON IMAGE_FORMAT

Calls the broker exactly as services/images.py does: start_upload, send_upload
(the file streamed in pieces, hashed as it is read), commit_upload, then
volume_jobs.wait polling the agent's job. Prints one JSON line: the phases'
wall times, the job's result, this process's CPU seconds and peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from engine_lib.broker import AgentClient
from engine_lib.services import volume_jobs


def vm_hwm_mib(pid: int | str = "self") -> float:
    """Peak resident set size of a process, MiB (VmHWM)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    pki_dir, address, port, path, volume_json, image_format = sys.argv[1:7]
    volume = json.loads(volume_json)
    client = AgentClient(address, int(port), pki_dir, timeout=300)
    length = os.path.getsize(path)
    baseline, cpu = vm_hwm_mib(), _cpu_s()
    started = time.monotonic()
    job = client.start_upload(volume, image_format=image_format, length=length,
                              content_type="data")["job"]
    with open(path, "rb") as stream:
        sent = client.send_upload(job, stream, length)
    streamed = time.monotonic()
    client.commit_upload(job, sent["sha256"])
    result = volume_jobs.wait(client, job)
    ended = time.monotonic()
    print(json.dumps({"seconds": ended - started, "send_s": streamed - started,
                      "commit_wait_s": ended - streamed, "length": length, "result": result,
                      "cpu_s": _cpu_s() - cpu,
                      "peak_rss_mib": vm_hwm_mib(), "rss_before_mib": baseline}))


if __name__ == "__main__":
    main()
