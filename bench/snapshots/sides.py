"""Both sides of each make bench-snapshots pair: kestrel's agent routes and the raw reference.

Kestrel: the engine's broker calls of the issue's contract (create_snapshot, start_merge,
start_backup, each job waited with services/volume_jobs.wait), timed around the call as the
engine sees it. Raw: ``virsh`` and ``qemu-img`` timed inside the lab host (in_host.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import kestrel_lab
from bench.snapshots import domain
from engine_lib.protocol.errors import NotFound
from engine_lib.services import volume_jobs

ROOT = Path(__file__).resolve().parents[2]
VIRSH = ["virsh", "-c", "qemu:///system"]
GUEST_TIMEOUT = 300.0  # the tiny guest boots in seconds; under TCG on a loaded machine, minutes


class InHost:
    """bench/snapshots/in_host.py inside a lab host, one JSON line per request."""

    def __init__(self, host_name: str, state_dir: str):
        argv = kestrel_lab.exec_argv(host_name, [sys.executable,
                                                 str(ROOT / "bench" / "snapshots" / "in_host.py")],
                                     state_dir)
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)

    def call(self, **request) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the helper in the lab host exited (status "
                               f"{self.process.wait()}); its stderr is above")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def seconds(self, *argv: str) -> float:
        return float(self.call(op="run", argv=list(argv))["seconds"])

    def wait_for_guest(self, vm_id: str) -> None:
        deadline = time.monotonic() + GUEST_TIMEOUT
        while True:
            try:
                self.call(op="ping", id=vm_id)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # polling the guest's boot, not synchronising on it

    def guest_writes(self, vm_id: str, offsets: list[int], length: int, seed: int) -> int:
        return int(self.call(op="write", id=vm_id, device="/dev/vda", offsets=offsets,
                             length=length, seed=seed)["bytes"])

    def close(self) -> None:
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except BrokenPipeError:
            pass  # it exited already
        self.process.wait(timeout=30)


def missing(client, method: str, route: str) -> str:
    """Why the kestrel side of a pair cannot run, or ""."""
    if not hasattr(client, method):
        return f"the broker has no {method} (agent route {route} not merged)"
    return ""


def _timed(call) -> tuple[float, dict]:
    begin = time.perf_counter()
    result = call()
    return time.perf_counter() - begin, result


class Kestrel:
    """The agent's snapshot, merge and backup routes on one VM whose chain it tracks."""

    def __init__(self, client, vm_id: str, alias: str, base: dict):
        self.client, self.vm_id, self.alias = client, vm_id, alias
        self.chain = [base]  # top first
        self.checkpoints: list[dict] = []
        self.backup_image = str(uuid.uuid4())

    def snapshot(self) -> tuple[float, dict]:
        new = domain.volume(self.chain[0]["image"])
        body = {"snapshot": str(uuid.uuid4()), "memory_volume": None, "quiesce": True,
                "disks": [{"alias": self.alias, "volume": new, "parent": self.chain[0]}],
                "metadata": domain.metadata_xml(self.alias, [new, *self.chain])}
        seconds, result = _timed(lambda: self.client.create_snapshot(self.vm_id, body))
        self.chain.insert(0, new)
        return seconds, result

    def merge_top(self) -> float:
        """Active commit of the top into the volume below, pivot; the old top deleted."""
        top, base = self.chain[0], self.chain[1]
        body = {"alias": self.alias, "base": _source(base), "top": _source(top),
                "top_is_active": True,
                "metadata": domain.metadata_xml(self.alias, self.chain[1:])}
        seconds, _result = _timed(lambda: volume_jobs.wait(
            self.client, self.client.start_merge(self.vm_id, body)["job"], timeout=300))
        self.chain.pop(0)
        self.client.delete_volumes([top])
        return seconds

    def backup(self, incremental: bool) -> tuple[float, dict]:
        """A push backup of vda into a new volume of the backup image; (seconds, result)."""
        parent = self.checkpoints[-1]["target"] if incremental and self.checkpoints else None
        target = domain.volume(self.backup_image)
        checkpoint = str(uuid.uuid4())
        body = {"backup": str(uuid.uuid4()), "checkpoint": checkpoint,
                "incremental": self.checkpoints[-1]["id"] if parent else "",
                "checkpoints": [{"id": c["id"], "xml": c["xml"]} for c in self.checkpoints],
                "disks": [{"alias": self.alias, "target": "vda", "target_volume": target,
                           "parent_volume": parent}]}
        seconds, result = _timed(lambda: volume_jobs.wait(
            self.client, self.client.start_backup(self.vm_id, body)["job"], timeout=600))
        # As the engine: the checkpoints the agent pruned are forgotten.
        pruned = set(result.get("pruned") or [])
        self.checkpoints = [c for c in self.checkpoints if c["id"] not in pruned]
        self.checkpoints.append({"id": checkpoint, "xml": result["checkpoint_xml"],
                                 "target": target})
        return seconds, result


def _source(vol: dict) -> dict:
    """A volume as the merge route names one (no size)."""
    return {k: vol[k] for k in ("domain", "image", "volume", "format")}


def available(call) -> str:
    """Run the first kestrel call of a pair; "" or why the agent refused the route."""
    try:
        call()
    except NotFound as exc:
        if exc.details.get("kind") != "API path":
            raise  # a route that is there failing is the bench's failure
        return f"the agent answered 404: {exc}"
    return ""


class Raw:
    """The same operations by hand on the comparable VM."""

    def __init__(self, helper: InHost, vm_id: str, domain_dir: str, base: dict):
        self.helper, self.vm_id, self.domain_dir = helper, vm_id, domain_dir
        self.image_dir = os.path.join(domain_dir, base["image"])
        self.base_path = os.path.join(self.image_dir, base["volume"])
        self.quiesce = True

    def snapshot(self) -> float:
        overlay = os.path.join(self.image_dir, str(uuid.uuid4()))
        argv = [*VIRSH, "snapshot-create-as", self.vm_id, "--disk-only", "--no-metadata",
                "--atomic", "--diskspec", f"vda,file={overlay},driver=qcow2"]
        if self.quiesce:
            try:
                return self.helper.seconds(*argv, "--quiesce")
            except RuntimeError:
                self.quiesce = False  # as the agent: without, when the guest cannot freeze
        return self.helper.seconds(*argv)

    def merge_top(self) -> float:
        """virsh blockcommit --active --pivot; the old top deleted (untimed)."""
        top = self.top()
        seconds = self.helper.seconds(*VIRSH, "blockcommit", self.vm_id, "vda", "--active",
                                      "--pivot")
        os.unlink(top)
        return seconds

    def top(self) -> str:
        return domain.live_source(self.helper.call(
            op="run", argv=[*VIRSH, "dumpxml", self.vm_id])["stdout"])

    def convert(self, source: str) -> float:
        """qemu-img convert of a disk in use (-U) into a new qcow2 on the same domain."""
        target = os.path.join(self.domain_dir, f"bench-snapshots-convert-{uuid.uuid4()}")
        try:
            return self.helper.seconds("qemu-img", "convert", "-U", "-f", "qcow2", "-O",
                                       "qcow2", source, target)
        finally:
            if os.path.exists(target):
                os.unlink(target)
