"""The upload half of make bench-images: one upload through the agent vs ``qemu-img convert``.

An upload is bench/images/upload_client.py in a process of its own (the engine's
broker calls, over mutual TLS, to a real agent in a lab host); the agent's peak
RSS is reset (/proc/PID/clear_refs) before and read (VmHWM) after each one.
``qemu-img convert`` runs on the same files and the same storage domain directory,
as an operator would type it (it flushes the target at the end; the agent does not).
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import time
import uuid

from bench.images.upload_client import vm_hwm_mib

MIB = 1024 * 1024


def make_images(work: str, size_mib: int) -> tuple[str, str]:
    """A used disk of ``size_mib``: regions of 1-16 MiB, about half random data and
    half zeros (holes in the raw file); (raw path, qcow2 path of the same content)."""
    raw, qcow2 = os.path.join(work, "image.raw"), os.path.join(work, "image.qcow2")
    rng = random.Random(16)
    with open(raw, "wb") as handle:
        done = 0
        while done < size_mib:
            region = min(rng.randint(1, 16), size_mib - done)
            if rng.random() < 0.5:
                for _ in range(region):
                    handle.write(rng.randbytes(MIB))
            else:
                handle.seek(region * MIB, os.SEEK_CUR)
            done += region
        handle.truncate(size_mib * MIB)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True)
    return raw, qcow2


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process and of the children it waited for (its qemu-img runs)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def convert(source: str, source_format: str, target_format: str, target: str,
            options: tuple[str, ...] = ()) -> dict:
    """One ``qemu-img convert``: wall and CPU seconds; the target is removed after."""
    cpu, started = _children_cpu_s(), time.monotonic()
    subprocess.run(["qemu-img", "convert", *options, "-f", source_format, "-O", target_format,
                    source, target], check=True)
    seconds = time.monotonic() - started
    os.unlink(target)
    return {"seconds": seconds, "cpu_s": _children_cpu_s() - cpu}


def agent_upload(agent, path: str, image_format: str, target_format: str,
                 domain: str = "data") -> dict:
    """One upload through ``agent`` (an agent_fixtures.AgentHandle) into a new volume of
    ``domain``, which is deleted after; the client's and the agent's figures."""
    volume = {"domain": domain, "image": str(uuid.uuid4()), "volume": str(uuid.uuid4()),
              "format": target_format, "size_mib": 0}
    with open(f"/proc/{agent.pid}/clear_refs", "w") as handle:
        handle.write("5")  # VmHWM := the current RSS
    agent_rss_before, agent_cpu = vm_hwm_mib(agent.pid), _cpu_s(agent.pid)
    run = subprocess.run([sys.executable, "-m", "bench.images.upload_client", agent.pki_dir,
                          agent.address, "54321", path, json.dumps(volume), image_format],
                         capture_output=True, text=True, check=False)
    if run.returncode:
        raise SystemExit(f"the upload client failed: {run.stderr.strip()}")
    figures = json.loads(run.stdout.splitlines()[-1])
    figures.update(agent_peak_rss_mib=vm_hwm_mib(agent.pid), agent_rss_before_mib=agent_rss_before,
                   agent_cpu_s=_cpu_s(agent.pid) - agent_cpu)
    agent.client(timeout=60).delete_volumes([{k: volume[k] for k in ("domain", "image",
                                                                     "volume")}])
    return figures
