"""Merging a volume into its backing volume: deleting a snapshot.

Live (a running VM): libvirt's block commit of ``top`` into ``base`` with the
RELATIVE flag, so the volume above ``top`` is rebased onto ``base`` by its
relative name; when ``top`` is the disk's active layer, an active commit that
pivots the disk onto ``base`` once QEMU has mirrored everything. A block job
already running on the disk (the agent restarted mid-merge; QEMU kept going) is
adopted, not restarted. Either way the job ends with the domain metadata set to
the chain the engine now describes, so later checks and migrations see it.

Offline (a stopped VM): ``qemu-img commit`` of ``top`` into ``base`` through an
explicit chain of descriptors (nothing is probed from headers), then ``qemu-img
rebase -u`` of ``top``'s child onto ``base`` by relative name. Neither removes a
file: the engine deletes ``top`` once its database says the chain is without it.
Each step leaves a chain that reads the same data, so a retry after a crash is
safe; a ``top`` already gone counts as merged when the child is on ``base``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from engine_lib.agent import image_check
from engine_lib.agent.images import run_qemu_img
from engine_lib.agent.jobs import Job, Jobs
from engine_lib.agent.snapshots import bare
from engine_lib.agent.volumes import FORMATS, VolumeLocation
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError
from engine_lib.protocol.metadata import NAMESPACE, PREFIX

# QEMU's block job is read this often while it runs, first more often (a small commit
# ends within milliseconds); each read is one QMP query.
FIRST_POLL, POLL = 0.01, 0.05
_COMMIT_TYPES = (libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT,
                 libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT)
_VOLUME_KEYS = {"domain", "image", "volume", "format", "size_mib"}


# -- requests ------------------------------------------------------------------------------

def volume(item: Any, field: str, domains: dict[str, str]) -> tuple[VolumeLocation, str]:
    """A {domain, image, volume[, format, size_mib]} object: its location and format."""
    if not isinstance(item, dict):
        raise InvalidSpec(field, "an object {domain, image, volume, format} is required")
    unknown = set(item) - _VOLUME_KEYS
    if unknown:
        raise InvalidSpec(field, f"unknown keys {sorted(unknown)}")
    for key in ("domain", "image", "volume"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise InvalidSpec(f"{field}.{key}", "a non-empty string is required")
    fmt = item.get("format", "qcow2")
    if fmt not in FORMATS:
        raise InvalidSpec(f"{field}.format", f"'{fmt}' is not one of {FORMATS}")
    if item["domain"] not in domains:
        raise InvalidSpec(f"{field}.domain", f"storage domain '{item['domain']}' is not "
                                             "attached to this host")
    for key in ("image", "volume"):
        value = item[key]
        if "/" in value or value in (".", "..") or "\x00" in value:
            raise InvalidSpec(f"{field}.{key}", f"'{value}' is not a valid file name")
    return VolumeLocation(item["domain"], item["image"], item["volume"]), str(fmt)


def _key(location: VolumeLocation) -> str:
    return f"{location.domain}/{location.image}/{location.volume}"


# -- live ------------------------------------------------------------------------------------

def start_live(hypervisor: Any, jobs: Jobs, vm_id: str, body: dict) -> dict:
    """POST /vms/{id}/merges: validate, find the disk, start (or adopt) the block job."""
    domains = hypervisor.config.storage_domains
    alias = body.get("alias")
    if not isinstance(alias, str) or not alias.startswith("ua-"):
        raise InvalidSpec("alias", f"{alias!r} is not a device alias (ua-...)")
    base, _ = volume(body.get("base"), "base", domains)
    top, _ = volume(body.get("top"), "top", domains)
    if base.domain != top.domain:
        raise InvalidSpec("top.domain", "top and base are on one storage domain")
    active = body.get("top_is_active", False)
    if not isinstance(active, bool):
        raise InvalidSpec("top_is_active", f"must be true or false, got {active!r}")
    bandwidth = body.get("bandwidth_mibps", 0)
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or bandwidth < 0:
        raise InvalidSpec("bandwidth_mibps", f"a whole number of MiB/s (0: no limit) is "
                                             f"required, got {bandwidth!r}")
    metadata = body.get("metadata")
    if not isinstance(metadata, str) or not metadata.strip():
        raise InvalidSpec("metadata", "the <kestrel:vm> element for the chain after the "
                                      "merge is required")
    try:
        ET.fromstring(metadata)
    except ET.ParseError as exc:
        raise InvalidSpec("metadata", f"not well-formed XML ({exc})") from None
    dom = hypervisor.lookup(vm_id)
    target, chain = disk_chain(dom, alias)
    # Engine retries name the same merge: a per-disk job target refuses a second at once.
    job = jobs.create("merge", f"{vm_id}/{alias}")
    job.phase = "merging"
    plan = {"dom": dom, "target": target, "base": base.path(domains),
            "top": top.path(domains), "active": active, "metadata": metadata,
            "alias": alias, "bandwidth": bandwidth}
    try:
        _check_positions(chain, plan)
    except BaseException as exc:
        jobs.finish(job, exc)
        raise
    jobs.run(job, lambda j: _live(j, plan))
    return {"job": job.id}


def disk_chain(dom: Any, alias: str) -> tuple[str, list[str]]:
    """The disk's target ("vda") and its live chain of files, top first."""
    root = ET.fromstring(dom.XMLDesc(0))
    for disk in root.iterfind("devices/disk"):
        node = disk.find("alias")
        if node is None or node.get("name") != alias:
            continue
        target = disk.find("target")
        chain, store = [], disk
        while store is not None:
            source = store.find("source")
            if source is None or not source.get("file"):
                break
            chain.append(source.get("file", ""))
            store = store.find("backingStore")
        return (target.get("dev", "") if target is not None else ""), chain
    raise InvalidSpec("alias", f"the VM has no disk with alias '{alias}'")


def _index(chain: list[str], path: str) -> int:
    real = os.path.realpath(path)
    for index, item in enumerate(chain):
        if os.path.realpath(item) == real:
            return index
    return -1


def _check_positions(chain: list[str], plan: dict) -> None:
    """``top`` directly on ``base`` in the live chain (or already merged away)."""
    top, base = _index(chain, plan["top"]), _index(chain, plan["base"])
    if top < 0:
        if base < 0:
            raise Conflict(f"disk '{plan['alias']}' has neither volume {plan['base']} nor "
                           f"{plan['top']} in its chain", alias=plan["alias"])
        return  # merged already: the job only sets the metadata
    if base != top + 1:
        raise Conflict(f"disk '{plan['alias']}': volume {plan['top']} is not directly on "
                       f"{plan['base']} in the running chain", alias=plan["alias"])
    if (top == 0) != plan["active"]:
        raise InvalidSpec("top_is_active", f"{plan['active']} but volume {plan['top']} is "
                                           f"{'' if top == 0 else 'not '}the active layer")


def _live(job: Job, plan: dict) -> dict:
    dom, target = plan["dom"], plan["target"]
    _, chain = disk_chain(dom, plan["alias"])
    if _index(chain, plan["top"]) >= 0:
        info = _block_job(dom, target)
        if info and info.get("type") not in _COMMIT_TYPES:
            raise Conflict(f"disk '{plan['alias']}' runs another block job (type "
                           f"{info.get('type')})", alias=plan["alias"])
        if not info:
            flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_RELATIVE
            if plan["active"]:
                flags |= libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
            _libvirt("start the block commit", lambda: dom.blockCommit(
                target, plan["base"], None if plan["active"] else plan["top"], plan["bandwidth"],
                flags))
        else:
            job.data["adopted"] = True
        job.cleanups.append(lambda: _abort(dom, target))
        _follow(job, dom, target, plan)
    job.phase = "metadata"
    _libvirt("set the domain metadata", lambda: dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT, bare(plan["metadata"]), PREFIX, NAMESPACE,
        libvirt.VIR_DOMAIN_AFFECT_LIVE))
    _, chain = disk_chain(dom, plan["alias"])
    return {"chain": chain, "adopted": bool(job.data.get("adopted"))}


def _follow(job: Job, dom: Any, target: str, plan: dict) -> None:
    """Progress into the job until the commit ends (an active one: pivot when ready)."""
    pause = FIRST_POLL
    while True:
        job.check()
        info = _block_job(dom, target)
        if not info:
            break
        job.report(int(info.get("cur", 0)), int(info.get("end", 0)))
        if plan["active"] and info.get("end") and info.get("cur") == info.get("end"):
            try:
                dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                break
            except libvirt.libvirtError as exc:  # not ready yet: QEMU still mirrors
                if "not ready" not in (exc.get_error_message() or ""):
                    raise KestrelError(f"pivot of disk '{plan['alias']}' failed: "
                                       f"{exc.get_error_message()}") from None
        time.sleep(pause)
        pause = min(POLL, pause * 2)
    _, chain = disk_chain(dom, plan["alias"])
    if _index(chain, plan["top"]) >= 0:
        raise KestrelError(f"the block commit of {plan['top']} into {plan['base']} ended "
                           "without removing it from the chain (libvirt's log says why)",
                           alias=plan["alias"])


def _block_job(dom: Any, target: str) -> dict:
    return _libvirt("read the block job", lambda: dom.blockJobInfo(target, 0)) or {}


def _abort(dom: Any, target: str) -> None:
    """A failed or aborted merge stops QEMU's job: the chain stays as it was."""
    with contextlib.suppress(libvirt.libvirtError):
        if dom.blockJobInfo(target, 0):
            dom.blockJobAbort(target, 0)


def _libvirt(what: str, call: Any) -> Any:
    try:
        return call()
    except libvirt.libvirtError as exc:
        raise KestrelError(f"libvirt could not {what}: {exc.get_error_message()}") from None


# -- offline ---------------------------------------------------------------------------------

def start_offline(jobs: Jobs, domains: dict[str, str], in_use: set[str], body: dict) -> dict:
    """POST /volumes/merge: validate, open the files, run commit + rebase as a job."""
    base, base_fmt = volume(body.get("base"), "base", domains)
    top, top_fmt = volume(body.get("top"), "top", domains)
    child = None
    if body.get("child") is not None:
        child = volume(body["child"], "child", domains)
    items = body.get("chain", [])
    if not isinstance(items, list):
        raise InvalidSpec("chain", "a list of the volumes below base, nearest first")
    chain = [volume(item, f"chain[{i}]", domains) for i, item in enumerate(items)]
    for field, (location, _) in [("top", (top, top_fmt)), ("child", child or (None, "")),
                                 *[(f"chain[{i}]", c) for i, c in enumerate(chain)]]:
        if location is not None and location.domain != base.domain:
            raise InvalidSpec(f"{field}.domain", "a chain is on one storage domain")
    if top_fmt != "qcow2" or (child is not None and child[1] != "qcow2"):
        raise InvalidSpec("top.format", "only qcow2 volumes have a backing volume")
    used = {os.path.realpath(p) for p in in_use}
    for field, location in [("base", base), ("top", top)] + ([("child", child[0])]
                                                             if child else []):
        if os.path.realpath(location.checked_path(domains)) in used:
            raise Conflict(f"volume {location.path(domains)} is a disk of a VM defined on "
                           "this host; merge it live", field=field)
    job = jobs.create("merge", _key(base))
    job.phase = "committing"
    jobs.run(job, lambda j: _offline(j, domains, (base, base_fmt), (top, top_fmt), child,
                                     chain))
    return {"job": job.id}


def _offline(job: Job, domains: dict[str, str], base: tuple[VolumeLocation, str],
             top: tuple[VolumeLocation, str], child: tuple[VolumeLocation, str] | None,
             chain: list[tuple[VolumeLocation, str]]) -> dict:
    relative = f"../{base[0].relpath}"
    fds: list[int] = []
    job.closers.append(lambda: [os.close(fd) for fd in fds])
    committed = top[0].exists(domains)
    if committed:
        for location, _ in reversed(chain):
            fds.append(_open(location, domains, os.O_RDONLY, "chain"))
        fds.append(_open(base[0], domains, os.O_RDWR, "base"))
        fds.append(_open(top[0], domains, os.O_RDWR, "top"))
        spec: dict | None = None
        for (_, fmt), fd in zip([*reversed(chain), base, top], fds):
            spec = image_check.spec(fmt, fd, spec)
        run_qemu_img(job, ["qemu-img", "commit", "-p", "-d", "json:" + json.dumps(spec)],
                     fds, "commit")
    elif child is None or _backing_name(child, domains) != relative:
        raise InvalidSpec("top", f"volume {top[0].path(domains)} does not exist and the "
                                 "chain is not merged")
    if child is not None:
        job.phase = "rebasing"
        fd = _open(child[0], domains, os.O_RDWR, "child")
        fds.append(fd)
        run_qemu_img(job, ["qemu-img", "rebase", "-u", "-b", relative, "-F", base[1],
                            image_check.pinned(child[1], fd)], [fd], "rebase")
    return {"committed": committed, "child_backing": relative if child else ""}


def _open(location: VolumeLocation, domains: dict[str, str], flags: int, field: str) -> int:
    try:
        return location.open(domains, flags)
    except FileNotFoundError:
        raise InvalidSpec(field, f"volume {location.path(domains)} does not exist") from None


def _backing_name(child: tuple[VolumeLocation, str], domains: dict[str, str]) -> str:
    fd = _open(child[0], domains, os.O_RDONLY, "child")
    try:
        result = subprocess.run(["qemu-img", "info", "--output=json", "-U",
                                 image_check.pinned(child[1], fd)], pass_fds=(fd,),
                                capture_output=True, text=True, check=False)
    finally:
        os.close(fd)
    if result.returncode != 0:
        raise KestrelError(f"qemu-img cannot read {child[0].path(domains)}: "
                           f"{result.stderr.strip()}")
    return str(json.loads(result.stdout).get("backing-filename", ""))

