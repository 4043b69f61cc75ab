"""make bench-images: images through kestrel vs qemu-img and libvirt by hand, side by side.

On lab host h1 (brought up if the lab is down, taken down again then), with a
real agent started there as the system tests start it, and one image of 1 GiB
(regions of 1-16 MiB, half random data, half zeros) as raw and as qcow2:
  1. upload: the engine's broker calls (start_upload, send_upload streaming over
     mutual TLS, commit_upload, volume_jobs.wait) in a process of their own, into a
     volume of the lab's "data" domain, vs ``qemu-img convert`` of the same file
     into the same directory; qcow2 -> qcow2 (the agent's fast path: checked, then
     linked into place) is the goal figure, raw -> qcow2 (the agent converts) is
     for information. Rounds alternate which side goes first; medians compared.
  2. thin VM: the engine (SQLite, this agent) makes a template from the qcow2
     uploaded as a floating disk, then each round creates and starts a thin VM of
     it (``vms.ensure(template=..., clone=False, state=running)``) vs mkdir +
     ``qemu-img create -b`` + defineXML + create of the same domain in the host.
     The VMs boot the lab's tiny guest kernel; the first round warms both up.
  3. peak RSS of the upload path: the client process's VmHWM and the agent's
     (reset before each upload through /proc/PID/clear_refs).
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "system"))  # how the system tests run an agent

from agent_fixtures import start_agent, stop_agent

import kestrel_lab
from bench.images import thin, upload
from engine_lib import pki
from engine_lib.engine import Engine

SIZE_MIB = 1024
SAME_FORMAT_ROUNDS = 3
CONVERTING_ROUNDS = 2
THIN_ROUNDS = 8
GOALS = {"upload_vs_convert": 0.8, "thin_vm_ratio": 1.2}  # >= and <=
TEMPLATE = "bench-tpl"


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_upload(agent, qcow2: str, raw: str, domain_dir: str) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {k: [] for k in (
        "upload", "convert", "convert_unsafe", "upload_raw", "convert_raw")}
    target = os.path.join(domain_dir, "bench-images-convert")
    for round_ in range(SAME_FORMAT_ROUNDS):
        sides = [lambda: runs["upload"].append(upload.agent_upload(agent, qcow2, "qcow2", "qcow2")),
                 lambda: runs["convert"].append(upload.convert(qcow2, "qcow2", "qcow2", target)),
                 lambda: runs["convert_unsafe"].append(
                     upload.convert(qcow2, "qcow2", "qcow2", target, ("-t", "unsafe")))]
        for side in sides if round_ % 2 == 0 else reversed(sides):
            side()
    for round_ in range(CONVERTING_ROUNDS):
        sides = [lambda: runs["upload_raw"].append(upload.agent_upload(agent, raw, "raw", "qcow2")),
                 lambda: runs["convert_raw"].append(upload.convert(raw, "raw", "qcow2", target))]
        for side in sides if round_ % 2 == 0 else reversed(sides):
            side()
    return runs


def engine_setup(engine, host, state_dir: str, qcow2: str) -> tuple[float, dict]:
    """Cluster, host, domains, network; the qcow2 uploaded as a floating disk (timed)
    and made a template; (upload seconds, the template)."""
    engine.clusters.ensure("bench", virt_type="qemu")
    engine.hosts.ensure(host.name, address=host.address, cluster="bench")
    for name in ("data", "images"):
        engine.storage_domains.ensure(name, path=kestrel_lab.shared_dir(state_dir, name),
                                      clusters=["bench"])
    engine.networks.ensure("kestrelmgmt", cluster="bench")
    started = time.perf_counter()
    engine.images.upload("bench-image", storage_domain="data", upload_image_path=qcow2,
                         fmt="qcow2")
    uploaded = time.perf_counter() - started
    template = engine.templates.ensure(TEMPLATE, disk="bench-image", cluster="bench",
                                       settings={"memory": "128MiB", "machine": "pc"}).entity
    return uploaded, template


def bench_thin(engine, raw: thin.RawThin, domain_dir: str, template: dict) -> dict[str, list]:
    base = template["disks"][0]
    backing = f"../{base['image_id']}/{base['volume_id']}"
    times: dict[str, list[float]] = {"engine": [], "raw": []}
    domain: list[thin.RawDomain] = []  # the engine VM's XML, re-keyed for each raw round

    def engine_side(round_: int) -> float:
        name = f"bench-thin-{round_}"
        seconds, vm = thin.engine_round(engine, name, TEMPLATE)
        if not domain:
            domain.append(thin.RawDomain(raw.call(op="xml", id=vm["id"])["xml"], vm))
        thin.engine_remove(engine, name)
        return seconds

    def raw_side(round_: int) -> float:
        seconds, ids = thin.raw_round(raw, domain[0], f"bench-raw-{round_}", domain_dir,
                                      backing)
        raw.call(op="remove", id=ids["id"], dir=domain_dir, image=ids["image"])
        return seconds

    for round_ in range(THIN_ROUNDS + 1):  # round 0 (engine first) warms both up
        sides = [("engine", engine_side), ("raw", raw_side)]
        for side, run in sides if round_ % 2 == 0 else reversed(sides):
            seconds = run(round_)
            if round_:
                times[side].append(seconds)
    return times


def main() -> None:
    state_dir = os.path.abspath(os.environ.get("KESTREL_LAB_STATE_DIR",
                                               kestrel_lab.DEFAULT_STATE_DIR))
    began = time.monotonic()
    was_up = any(host.name == "h1" for host in kestrel_lab.status(state_dir))
    host = kestrel_lab.up(1, state_dir)[0]
    kestrel_lab.ensure_guest(state_dir)
    domain_dir = kestrel_lab.shared_dir(state_dir, "data")
    agent = raw = None
    try:
        # The image files sit on the same filesystem as the lab's storage domains.
        with tempfile.TemporaryDirectory(prefix="bench-images-", dir="/var/tmp") as work:
            pki_dir = os.path.join(work, "pki")
            pki.init_ca(pki_dir)
            agent = start_agent(host, pki_dir)
            info = agent.client().host_info()
            print(f"lab host {host.name}: libvirt {info['libvirt_version']}, QEMU "
                  f"{info['qemu_version']}, {info['cpus']} CPUs; load average "
                  f"{os.getloadavg()[0]:.1f}")
            raw_image, qcow2 = upload.make_images(work, SIZE_MIB)
            sizes = {"raw": os.path.getsize(raw_image), "qcow2": os.path.getsize(qcow2)}
            runs = bench_upload(agent, qcow2, raw_image, domain_dir)
            # As an administrator would: the lab's shared storage is allowed for domains.
            Path(work, "engine.conf").write_text(
                f"[storage]\nfile_domain_roots = {os.path.dirname(domain_dir)}\n")
            with Engine.open(engine_dir=work, db_url=f"sqlite:///{work}/engine.db") as engine:
                try:
                    engine_upload_s, template = engine_setup(engine, host, state_dir, qcow2)
                    raw = thin.RawThin(host.name, state_dir)
                    thin_times = bench_thin(engine, raw, domain_dir, template)
                finally:
                    for round_ in range(THIN_ROUNDS + 1):
                        thin.engine_remove(engine, f"bench-thin-{round_}")
                    engine.templates.ensure(TEMPLATE, state="absent")
    finally:
        if raw is not None:
            raw.close()
        if agent is not None:
            stop_agent(agent.pid)
        if not was_up:
            kestrel_lab.down(state_dir)
    report(sizes, runs, engine_upload_s, thin_times, time.monotonic() - began)


def report(sizes: dict, runs: dict, engine_upload_s: float, thin_times: dict,
           elapsed: float) -> None:
    med = {k: median([r["seconds"] for r in v]) for k, v in runs.items()}
    uploads = runs["upload"] + runs["upload_raw"]
    qcow2_mib, raw_mib = sizes["qcow2"] / upload.MIB, sizes["raw"] / upload.MIB
    engine_ms, raw_ms = median(thin_times["engine"]) * 1000, median(thin_times["raw"]) * 1000
    f = {
        "image_virtual_mib": SIZE_MIB,
        "qcow2_file_mib": round(qcow2_mib, 1),
        "upload_rounds": SAME_FORMAT_ROUNDS,
        "upload_s": round(med["upload"], 2),
        "upload_mib_s": round(qcow2_mib / med["upload"], 1),
        "upload_send_s": round(median([r["send_s"] for r in runs["upload"]]), 2),
        "upload_commit_wait_s": round(median([r["commit_wait_s"] for r in runs["upload"]]), 2),
        "qemu_img_convert_s": round(med["convert"], 2),
        "qemu_img_convert_mib_s": round(qcow2_mib / med["convert"], 1),
        "upload_vs_convert": round(med["convert"] / med["upload"], 3),
        "upload_vs_convert_goal_min": GOALS["upload_vs_convert"],
        "qemu_img_convert_unsafe_s": round(med["convert_unsafe"], 2),
        "upload_vs_convert_unsafe": round(med["convert_unsafe"] / med["upload"], 3),
        # CPU seconds: comparable on a loaded machine where wall time is not.
        "upload_cpu_s": round(median([r["cpu_s"] + r["agent_cpu_s"] for r in runs["upload"]]), 2),
        "qemu_img_convert_cpu_s": round(median([r["cpu_s"] for r in runs["convert"]]), 2),
        "converting_rounds": CONVERTING_ROUNDS,
        "upload_raw_to_qcow2_s": round(med["upload_raw"], 2),
        "qemu_img_convert_raw_to_qcow2_s": round(med["convert_raw"], 2),
        "converting_upload_vs_convert": round(med["convert_raw"] / med["upload_raw"], 3),
        "engine_images_upload_s": round(engine_upload_s, 2),
        "thin_vm_rounds": THIN_ROUNDS,
        "thin_vm_engine_ms": round(engine_ms, 1),
        "thin_vm_raw_ms": round(raw_ms, 1),
        "thin_vm_ratio": round(engine_ms / raw_ms, 3),
        "thin_vm_ratio_goal_max": GOALS["thin_vm_ratio"],
        "client_peak_rss_mib": round(max(r["peak_rss_mib"] for r in uploads), 1),
        "client_rss_before_mib": round(max(r["rss_before_mib"] for r in uploads), 1),
        "agent_peak_rss_mib": round(max(r["agent_peak_rss_mib"] for r in uploads), 1),
        "agent_rss_before_mib": round(max(r["agent_rss_before_mib"] for r in uploads), 1),
        "load_average": round(os.getloadavg()[0], 2),
        "bench_seconds": round(elapsed, 1),
    }
    print(f"image: {SIZE_MIB} MiB virtual, half random data; qcow2 file {f['qcow2_file_mib']} "
          f"MiB, raw {raw_mib:.0f} MiB")
    print(f"upload qcow2 -> qcow2 ({SAME_FORMAT_ROUNDS} rounds, median): agent "
          f"{f['upload_s']} s ({f['upload_mib_s']} MiB/s; streaming {f['upload_send_s']} s, "
          f"commit + check + job polls {f['upload_commit_wait_s']} s) vs qemu-img convert "
          f"{f['qemu_img_convert_s']} s ({f['qemu_img_convert_mib_s']} MiB/s) -> "
          f"{f['upload_vs_convert']}x qemu-img's throughput (goal >= "
          f"{GOALS['upload_vs_convert']})")
    print(f"  for scale: qemu-img convert -t unsafe (no flush, as the agent) "
          f"{f['qemu_img_convert_unsafe_s']} s -> {f['upload_vs_convert_unsafe']}x; CPU "
          f"seconds: upload {f['upload_cpu_s']} (client + agent) vs qemu-img "
          f"{f['qemu_img_convert_cpu_s']}")
    print(f"upload raw -> qcow2, converting ({CONVERTING_ROUNDS} rounds, median, information): "
          f"agent {f['upload_raw_to_qcow2_s']} s vs qemu-img convert "
          f"{f['qemu_img_convert_raw_to_qcow2_s']} s -> {f['converting_upload_vs_convert']}x")
    print(f"  engine.images.upload of the qcow2 (floating disk, DB rows, hashing the file "
          f"first): {f['engine_images_upload_s']} s")
    print(f"thin VM from a template, created + started ({THIN_ROUNDS} rounds, median): engine "
          f"{f['thin_vm_engine_ms']} ms vs mkdir + qemu-img create -b + define + start "
          f"{f['thin_vm_raw_ms']} ms -> ratio {f['thin_vm_ratio']} (goal <= "
          f"{GOALS['thin_vm_ratio']})")
    print(f"peak RSS during the uploads: client {f['client_peak_rss_mib']} MiB (at start "
          f"{f['client_rss_before_mib']}), agent {f['agent_peak_rss_mib']} MiB (before "
          f"{f['agent_rss_before_mib']}); the image is {SIZE_MIB} MiB")
    print(json.dumps(f))


if __name__ == "__main__":
    main()
