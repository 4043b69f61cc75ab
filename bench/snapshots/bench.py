"""make bench-snapshots: snapshots, merges and backups through the agent vs by hand, side by side.

On lab host h1 (brought up if the lab is down, taken down again then), with a real agent
started there as the system tests start it, two comparable VMs of the lab's tiny guest
(each on its own qcow2 volume holding 128 MiB of random data, a guest agent answering):
  1. live snapshot: the agent's POST /vms/{id}/snapshots (overlay made, quiesced,
     external disk-only snapshot, metadata updated) vs ``virsh snapshot-create-as
     --disk-only --no-metadata --atomic [--quiesce]`` (goal <= 1.2x);
  2. live merge of that overlay after the guest wrote 4 MiB into it: the agent's POST
     /vms/{id}/merges (active commit + pivot, waited as a job) vs ``virsh blockcommit
     --active --pivot`` (goal <= 1.2x);
  3. incremental backup (push, through the agent's POST /vms/{id}/backups) after the guest
     changed 8 MiB: the backup file's size vs the bytes changed (goal <= 1.2x + 1 MiB of
     qcow2 metadata);
  4. full backup throughput vs ``qemu-img convert`` of the same disk (information), with
     the time libvirt's backup job itself took (QEMU's copy, which kestrel does not tune:
     libvirt 9.0 exposes none of its chunk or worker settings).
Rounds alternate which side goes first; round 0 warms both up and is not counted.
A pair whose agent route is not there runs its raw half and says why the other is missing.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "system"))  # how the system tests run an agent

from agent_fixtures import start_agent, stop_agent

import kestrel_lab
from bench.snapshots import domain, figures
from bench.snapshots.sides import InHost, Kestrel, Raw, available, missing
from engine_lib import pki

ROUNDS = 5
BACKUP_ROUNDS = 3
MERGE_WRITE = 4 * figures.MIB
# What the guest changes between backups: 16 regions of 512 KiB, 12 MiB apart.
CHANGED_OFFSETS = [i * 12 * figures.MIB for i in range(16)]
CHANGED_LENGTH = 512 * 1024


class SnapshotRounds:
    """Each round: a live snapshot, the guest writes, a live merge; on both VMs."""

    def __init__(self, kestrel: Kestrel, raw: Raw, helper: InHost):
        self.kestrel, self.raw, self.helper = kestrel, raw, helper
        self.times: dict[str, list[float]] = {k: [] for k in ("k_snap", "r_snap", "k_merge",
                                                               "r_merge")}
        self.why = missing(kestrel.client, "create_snapshot", "POST /vms/{id}/snapshots")
        self.why_merge = missing(kestrel.client, "start_merge", "POST /vms/{id}/merges")

    def kestrel_round(self, round_: int) -> None:
        if self.why:
            return
        taken: list[float] = []
        self.why = available(lambda: taken.append(self.kestrel.snapshot()[0]))
        if self.why:
            self.why_merge = self.why_merge or "needs the agent's snapshot route"
            return
        self.helper.guest_writes(self.kestrel.vm_id, [0], MERGE_WRITE, seed=round_)
        if self.why_merge:
            self.kestrel.client.delete_volumes([self.kestrel.chain.pop(0)])
            return
        merged = self.kestrel.merge_top()
        if round_:
            self.times["k_snap"].extend(taken)
            self.times["k_merge"].append(merged)

    def raw_round(self, round_: int) -> None:
        taken = self.raw.snapshot()
        self.helper.guest_writes(self.raw.vm_id, [0], MERGE_WRITE, seed=round_)
        merged = self.raw.merge_top()
        if round_:
            self.times["r_snap"].append(taken)
            self.times["r_merge"].append(merged)

    def run(self) -> dict:
        for round_ in range(ROUNDS + 1):
            sides = [self.kestrel_round, self.raw_round]
            for side in sides if round_ % 2 == 0 else reversed(sides):
                side(round_)
        t = self.times
        return {"live_snapshot": figures.time_pair(t["k_snap"], t["r_snap"],
                                                   figures.GOALS["snapshot_ratio"], self.why),
                "live_merge": figures.time_pair(t["k_merge"], t["r_merge"],
                                                figures.GOALS["merge_ratio"], self.why_merge),
                "raw_quiesced": self.raw.quiesce}


class BackupRounds:
    """Full backups vs qemu-img convert of the same disk; then incrementals after writes."""

    def __init__(self, kestrel: Kestrel, raw: Raw, helper: InHost, domain_dir: str):
        self.kestrel, self.raw, self.helper = kestrel, raw, helper
        base = kestrel.chain[-1]
        self.source = os.path.join(domain_dir, base["image"], base["volume"])
        self.full_s: list[float] = []
        self.job_s: list[float] = []  # libvirt's backup job alone, as it reports it
        self.convert_s: list[float] = []
        self.why = missing(kestrel.client, "start_backup", "POST /vms/{id}/backups")

    def kestrel_round(self, round_: int) -> None:
        if self.why:
            return
        taken: list[tuple[float, dict]] = []
        self.why = available(lambda: taken.append(self.kestrel.backup(incremental=False)))
        if round_:
            self.full_s.extend(seconds for seconds, _result in taken)
            self.job_s.extend(result["copy_ms"] / 1000 for _seconds, result in taken)

    def raw_round(self, round_: int) -> None:
        seconds = self.raw.convert(self.source)
        if round_:
            self.convert_s.append(seconds)

    def run(self) -> dict:
        for round_ in range(BACKUP_ROUNDS + 1):
            sides = [self.kestrel_round, self.raw_round]
            for side in sides if round_ % 2 == 0 else reversed(sides):
                side(round_)
        incremental_bytes: list[int] = []
        changed = len(CHANGED_OFFSETS) * CHANGED_LENGTH
        for round_ in range(BACKUP_ROUNDS):
            written = self.helper.guest_writes(self.kestrel.vm_id, CHANGED_OFFSETS,
                                               CHANGED_LENGTH, seed=100 + round_)
            assert written == changed
            if self.why:
                continue
            _seconds, result = self.kestrel.backup(incremental=True)
            if result.get("fell_back"):
                self.why = f"the agent fell back to a full backup: {result['fell_back']}"
                incremental_bytes.clear()
                break
            incremental_bytes.append(int(result["disks"][0]["bytes"]))
        return {"incremental_backup": figures.incremental(
                    incremental_bytes, changed, figures.GOALS["incremental_bytes_ratio"],
                    self.why),
                "full_backup_throughput": figures.throughput(
                    domain.DATA_MIB * figures.MIB, self.full_s, self.convert_s, self.why,
                    self.job_s)}


def run(client, helper: InHost, domain_dir: str, work: str, vms: list[str],
        images: list[str]) -> dict:
    """Both VMs started, both groups of pairs run; ``vms``/``images`` name what to clean."""
    info = client.host_info()
    print(f"lab host: libvirt {info['libvirt_version']}, QEMU {info['qemu_version']}, "
          f"{info['cpus']} CPUs; load average {os.getloadavg()[0]:.1f}")
    seed = os.path.join(work, "seed.raw")
    domain.make_seed(seed)
    pair = []
    for side in ("kestrel", "raw"):
        base = domain.make_base(domain_dir, seed)
        images.append(base["image"])
        vm_id, alias = str(uuid.uuid4()), f"ua-{uuid.uuid4()}"
        vms.append(vm_id)
        client.start_vm(domain.domain_xml(vm_id, f"bench-snap-{side}", alias, base))
        pair.append((vm_id, alias, base))
    for vm_id, _alias, _base in pair:
        helper.wait_for_guest(vm_id)
    kestrel = Kestrel(client, *pair[0])
    images.append(kestrel.backup_image)
    raw = Raw(helper, pair[1][0], domain_dir, pair[1][2])
    found = SnapshotRounds(kestrel, raw, helper).run()
    found.update(BackupRounds(kestrel, raw, helper, domain_dir).run())
    return found


def main() -> None:
    state_dir = os.path.abspath(os.environ.get("KESTREL_LAB_STATE_DIR",
                                               kestrel_lab.DEFAULT_STATE_DIR))
    began = time.monotonic()
    was_up = any(host.name == "h1" for host in kestrel_lab.status(state_dir))
    host = kestrel_lab.up(1, state_dir)[0]
    kestrel_lab.ensure_guest(state_dir)
    domain_dir = kestrel_lab.shared_dir(state_dir, "data")
    found: dict = {}
    # The work directory holds the engine's PKI: it outlives the cleanup that needs it.
    with tempfile.TemporaryDirectory(prefix="bench-snapshots-", dir="/var/tmp") as work:
        pki_dir = os.path.join(work, "pki")
        pki.init_ca(pki_dir)
        agent = start_agent(host, pki_dir)
        helper = InHost(host.name, state_dir)
        vms: list[str] = []
        images: list[str] = []
        try:
            found = run(agent.client(timeout=120), helper, domain_dir, work, vms, images)
        finally:
            for vm_id in vms:
                for step in (agent.client().destroy_vm, agent.client().remove_vm):
                    try:
                        step(vm_id)
                    except Exception as exc:  # cleanup goes on
                        print(f"cleanup of {vm_id}: {exc}")
            for image in images:
                shutil.rmtree(os.path.join(domain_dir, image), ignore_errors=True)
            helper.close()
            stop_agent(agent.pid)
            if not was_up:
                kestrel_lab.down(state_dir)
    report(found, time.monotonic() - began)


def report(found: dict, elapsed: float) -> None:
    for name in ("live_snapshot", "live_merge", "incremental_backup",
                 "full_backup_throughput"):
        print(figures.describe(name.replace("_", " "), found[name]))
    print(f"raw snapshots quiesced: {found['raw_quiesced']}")
    found.update(load_average=round(os.getloadavg()[0], 2), bench_seconds=round(elapsed, 1))
    print(figures.summary(found))


if __name__ == "__main__":
    main()
