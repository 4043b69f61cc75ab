"""Fixtures for fast tests of engine_lib's own logic (no libvirt, no network)."""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
import uuid
import xml.etree.ElementTree as ET

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "support"))
import postgres

from engine_lib.broker import AgentApi
from engine_lib.engine import Engine
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import (
    AgentError,
    AgentUnreachable,
    Conflict,
    GuestAgentUnavailable,
    InvalidSpec,
    KestrelError,
    NotFound,
    VmNotFound,
)


class FakeAgent(AgentApi):
    """Stands in for a host agent in tests of the engine's own decisions.

    What it does not model raises NotImplementedError (AgentApi's default); subclasses
    in the tests add what they need. test_agent_api.py keeps the signatures in line.
    """

    def __init__(self, name: str, memory_mib: int = 4096, cpus: int = 4):
        self.name, self.memory_mib, self.cpus = name, memory_mib, cpus
        self.vms: dict[str, str] = {}  # id -> status
        self.reachable = True
        self.deleted_volumes: list[dict] = []
        self.hooks: list[str] = []

    def _check(self):
        if not self.reachable:
            raise AgentUnreachable(f"agent {self.name} unreachable: connection refused",
                                   cause="Connection refused")

    def host_info(self, timeout=None):
        self._check()
        facts = {"hostname": self.name, "host_uuid": f"uuid-{self.name}", "cpus": self.cpus,
                 "memory_mib": self.memory_mib, "libvirt_version": "9.0.0", "hooks": self.hooks}
        if "connected_storage" in self.__dict__:  # as the agent reports connected domains
            failed = self.__dict__.get("storage_failures", {})
            facts["storage_domains"] = sorted(
                [{"name": n, "path": p, "available": True}
                 for n, p in self.connected_storage.items()]
                + [{"name": n, "path": p, "available": False, "error": e}
                   for n, (p, e) in failed.items() if n not in self.connected_storage],
                key=lambda entry: entry["name"])
        return facts

    def start_vm(self, xml, mode="fresh"):
        self._check()
        vm_id = ET.fromstring(xml).findtext("uuid")
        self.vms[vm_id] = "Up"
        self.last_xml = xml
        self.__dict__.setdefault("xmls", {})[vm_id] = xml
        return {"id": vm_id, "status": "Up"}

    def restore_vm(self, xml, memory_volume, keep_memory=False):
        """Restore mode: recorded in ``restores``; the memory file goes unless kept."""
        self.restores = getattr(self, "restores", []) + [(xml, memory_volume, keep_memory)]
        if self._target(memory_volume) not in self._files():
            raise NotFound("memory volume", self._target(memory_volume))
        answer = self.start_vm(xml, "restore")
        if not keep_memory:
            self._files().pop(self._target(memory_volume), None)
        return answer

    def vm_status(self, vm_id):
        self._check()
        if vm_id not in self.vms:
            raise VmNotFound(vm_id)
        return {"id": vm_id, "status": self.vms[vm_id]}

    def list_vms(self):
        self._check()
        return [{"id": vm_id, "status": status} for vm_id, status in self.vms.items()]

    def stats(self):
        """The VM poll: what list_vms() lists (subclasses overriding it stay in step), each
        running VM with ``vm_counters[id]`` (default: no figures yet), the host with
        ``host_stats`` over figures of an idle host."""
        vms = self.list_vms()
        counters = getattr(self, "vm_counters", {})
        fresh = {"cpu": {"percent": None}, "memory": {}, "disks": [], "nics": [],
                 "rates": dict.fromkeys(("net_rx_bps", "net_tx_bps", "disk_read_bps",
                                         "disk_write_bps"))}
        running = [vm for vm in vms if vm.get("status") in ("Up", "Paused")]
        host = {"cpu": {"percent": None}, "memory_mib": self.memory_mib,
                "free_memory_mib": self.memory_mib, "used_memory_mib": 0,
                "load": [0.0, 0.0, 0.0], "running_vms": len(running), "vm_count": len(vms),
                **getattr(self, "host_stats", {})}
        return {"host": host,
                "vms": [{**vm, **counters.get(vm["id"], fresh)} if vm in running else vm
                        for vm in vms]}

    def vm_xml(self, vm_id):
        self._check()
        return self.last_xml

    def destroy_vm(self, vm_id):
        self._check()
        if vm_id not in self.vms:
            raise VmNotFound(vm_id)
        self.vms[vm_id] = "Down"

    def shutdown_vm(self, vm_id, timeout=60):
        return self.destroy_vm(vm_id)

    def remove_vm(self, vm_id):
        self._check()
        self.vms.pop(vm_id, None)

    def delete_volumes(self, volumes):
        self._check()
        self.deleted_volumes.extend(volumes)

    def connect_storage(self, name, export, path, options=""):
        """Records the call; ``mount_errors`` (name -> message) makes a mount fail."""
        self._check()
        self.storage_calls = getattr(self, "storage_calls", []) + [("connect", name, export,
                                                                    path)]
        connected = self.__dict__.setdefault("connected_storage", {})
        failures = self.__dict__.setdefault("storage_failures", {})
        error = getattr(self, "mount_errors", {}).get(name)
        if error:
            failures[name] = (path, error)
            raise AgentError(error, code="MountFailed")
        failures.pop(name, None)
        changed = connected.get(name) != path
        connected[name] = path
        return {"name": name, "path": path, "mounted": True, "changed": changed}

    def disconnect_storage(self, name):
        self._check()
        self.storage_calls = getattr(self, "storage_calls", []) + [("disconnect", name)]
        path = self.__dict__.setdefault("connected_storage", {}).pop(name, None)
        return {"name": name, "path": path, "mounted": False, "changed": path is not None}

    def install_crl(self, crl):
        self._check()
        self.crls = getattr(self, "crls", []) + [crl]
        return {"installed": ["/etc/kestrel/pki/crl.pem"], "libvirtd_reloaded": False}

    def guest_info(self, vm_id):
        self._check()
        report = getattr(self, "guests", {}).get(vm_id)  # vm id -> guest agent report
        if report is None:
            raise GuestAgentUnavailable(f"guest agent of VM {vm_id} not responding")
        return {"id": vm_id, **report}

    def guests_info(self):
        self._check()
        reports = getattr(self, "guests", {})
        running = [vm_id for vm_id, status in self.vms.items() if status == "Up"]
        return {"guests": {vm_id: reports[vm_id] for vm_id in running if vm_id in reports},
                "unavailable": {vm_id: "guest agent not responding" for vm_id in running
                                if vm_id not in reports}}

    # -- volume jobs: finished at once (``job_polls`` running answers first) ---------------
    # ``files``: "domain/image/volume" -> bytes on the host's domains; ``urls``: what
    # imports download (a missing URL fails as the agent's 404); ``check_errors``: a
    # function (bytes, request) -> InvalidSpec | None standing in for image_check.

    def _jobs(self) -> dict:
        return self.__dict__.setdefault("jobs", {})

    def _files(self) -> dict:
        return self.__dict__.setdefault("files", {})

    def _new_job(self, kind, target, **data):
        if any(j["target"] == target and j["status"] == "running"
               for j in self._jobs().values()):
            raise Conflict(f"volume {target} is busy", volume=target)
        job_id = str(uuid.uuid4())
        self._jobs()[job_id] = {"id": job_id, "kind": kind, "target": target,
                                "status": "running", "phase": "receiving", "progress": 0,
                                "done_bytes": 0, "total_bytes": 0, "result": None,
                                "error": None, "polls": getattr(self, "job_polls", 0), **data}
        return {"job": job_id}

    def _target(self, volume):
        return f"{volume['domain']}/{volume['image']}/{volume['volume']}"

    def _finish(self, job, data: bytes):
        """Check and place ``data`` as the job's volume (image_check and conversion)."""
        request = job["request"]
        error = getattr(self, "check_errors", lambda data, request: None)(data, request)
        if error is not None:
            job.update(status="failed", error=error.to_dict())
            return
        volume = request["volume"]
        self._files()[job["target"]] = data
        size_mib = max(volume.get("size_mib") or 0, -(-len(data) // (1 << 20)))
        digest = hashlib.sha256(data).hexdigest()
        job.update(status="succeeded", progress=100, done_bytes=len(data),
                   total_bytes=len(data),
                   result={"size_mib": size_mib, "format": volume["format"],
                           "detected_format": request.get("image_format") or volume["format"],
                           "sha256": digest, "actual_size": len(data)})

    def job(self, job_id, wait=0):
        self._check()
        job = self._jobs().get(job_id)
        if job is None:
            raise NotFound("job", job_id)
        if job["status"] == "running" and job["polls"] > 0:
            job["polls"] -= 1
            job["progress"] = 50
        elif job["status"] == "running" and "pending" in job:
            self._finish(job, job.pop("pending"))
        return {k: v for k, v in job.items() if k not in ("request", "polls", "pending")}

    def forget_job(self, job_id):
        self._check()
        job = self._jobs().pop(job_id, None)
        if job is None:
            raise NotFound("job", job_id)
        self.forgotten = getattr(self, "forgotten", []) + [job_id]
        if job["status"] == "running" and job["kind"] != "export":
            self._files().pop(job["target"], None)  # an abort leaves nothing
        return {"id": job_id, "status": "aborted" if job["status"] == "running"
                else job["status"]}

    def start_upload(self, volume, *, image_format, length, content_type):
        self._check()
        free = getattr(self, "free_bytes", None)
        if free is not None and length > free:
            raise InvalidSpec("length", f"{length} bytes do not fit in {free} free")
        if self._target(volume) in self._files():
            raise Conflict(f"volume {self._target(volume)} exists", volume=self._target(volume))
        return self._new_job("upload", self._target(volume), request={
            "volume": volume, "image_format": image_format, "length": length,
            "content_type": content_type})

    def send_upload(self, job_id, stream, length, progress=None):
        self._check()
        job = self._jobs()[job_id]
        data = stream.read(length)
        if progress is not None:
            progress(len(data))
        if len(data) < length:
            job.update(status="failed", error=KestrelError("short body").to_dict())
            raise KestrelError(f"the image ended after {len(data)} of its {length} bytes")
        job["received"] = data
        digest = hashlib.sha256(data).hexdigest()
        return {"received": len(data), "sha256": digest, "agent_sha256": digest}

    def commit_upload(self, job_id, sha256):
        self._check()
        job = self._jobs()[job_id]
        data = job.pop("received")
        if hashlib.sha256(data).hexdigest() != sha256:
            job.update(status="failed", error=InvalidSpec("sha256", "mismatch").to_dict())
        else:
            job["pending"] = data
        return {"job": job_id}

    def start_import(self, volume, *, url, image_format, sha256, content_type, timeout_s):
        self._check()
        answer = self._new_job("import", self._target(volume), request={
            "volume": volume, "image_format": image_format, "url": url})
        job = self._jobs()[answer["job"]]
        data = getattr(self, "urls", {}).get(url)
        if data is None:
            job.update(status="failed",
                       error=InvalidSpec("url", f"{url} answered HTTP 404").to_dict())
        elif sha256 and hashlib.sha256(data).hexdigest() != sha256:
            job.update(status="failed", error=InvalidSpec("sha256", "mismatch").to_dict())
        else:
            job["pending"] = data
        return answer

    def start_export(self, volume, chain, fmt):
        self._check()
        data = self._files().get(self._target(volume))
        if data is None:
            raise NotFound("volume", self._target(volume))
        answer = self._new_job("export", "", request={"volume": volume, "chain": chain})
        job = self._jobs()[answer["job"]]
        job.update(status="succeeded", export=data,
                   result={"length": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                           "format": fmt})
        return answer

    def read_export(self, job_id, out, progress=None):
        self._check()
        data = self._jobs()[job_id]["export"][:getattr(self, "export_cut", None)]
        out.write(data)
        if progress is not None:
            progress(len(data))
        return {"received": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def copy_volume(self, source, chain, target):
        self._check()
        self.copies = getattr(self, "copies", []) + [(source, chain, target)]
        answer = self._new_job("copy", self._target(target))
        self._files()[self._target(target)] = self._files().get(self._target(source), b"")
        self._jobs()[answer["job"]].update(status="succeeded", progress=100,
                                           result={"size_mib": target.get("size_mib", 0)})
        return answer

    def seal_volume(self, volume, hostname=""):
        self._check()
        self.seals = getattr(self, "seals", []) + [(volume, hostname)]
        answer = self._new_job("seal", self._target(volume))
        self._jobs()[answer["job"]].update(status="succeeded", progress=100, result={})
        return answer

    # Merges (deleting a snapshot) are recorded in ``merges`` and succeed at once.
    def start_merge(self, vm_id, body):
        self._check()
        self.merges = getattr(self, "merges", []) + [("live", vm_id, body)]
        answer = self._new_job("merge", f"{vm_id}/{body['alias']}")
        self._jobs()[answer["job"]].update(status="succeeded", progress=100,
                                           result={"chain": [], "adopted": False})
        return answer

    def merge_volumes(self, base, top, child, chain):
        self._check()
        self.merges = getattr(self, "merges", []) + [("offline", base, top, child, chain)]
        answer = self._new_job("merge", self._target(base))
        self._jobs()[answer["job"]].update(status="succeeded", progress=100,
                                           result={"committed": True})
        return answer

    # -- snapshots: ``vm_chains`` (vm id -> {alias: ["image/volume", ... top first]}) comes
    # from the started XML's metadata unless a test sets it; ``block_jobs`` ((vm id, alias)
    # -> job dict) shows in chains(); ``snapshot_errors`` (vm id -> KestrelError) fails the
    # next snapshot with nothing changed; ``quiesce_fails``: the guest agent never freezes.

    def _chains_of(self, vm_id):
        chains = self.__dict__.setdefault("vm_chains", {})
        if vm_id not in chains:
            xml = self.__dict__.get("xmls", {}).get(vm_id) or getattr(self, "last_xml", "")
            chains[vm_id] = _metadata_chains(xml, vm_id)
        return chains[vm_id]

    def create_snapshot(self, vm_id, body):
        self._check()
        if vm_id not in self.vms:
            raise VmNotFound(vm_id)
        if self.vms[vm_id] not in ("Up", "Paused"):
            raise Conflict(f"VM {vm_id} is {self.vms[vm_id]}: no live snapshot", vm_id=vm_id)
        error = getattr(self, "snapshot_errors", {}).pop(vm_id, None)
        if error is not None:
            raise error
        chains = self._chains_of(vm_id)
        for disk in body["disks"]:
            parent, new = disk["parent"], disk["volume"]
            top = chains.get(disk["alias"], [None])[0]
            if top != f"{parent['image']}/{parent['volume']}":
                raise Conflict(f"disk {disk['alias']}: chain changed (top is {top})",
                               alias=disk["alias"])
            if self._target(new) in self._files():
                raise Conflict(f"volume {self._target(new)} exists", volume=self._target(new))
        for disk in body["disks"]:
            new = disk["volume"]
            chains[disk["alias"]].insert(0, f"{new['image']}/{new['volume']}")
            self._files()[self._target(new)] = b""
        memory = body.get("memory_volume")
        if memory:
            self._files()[self._target(memory)] = b"memory"
        self.snapshots_taken = getattr(self, "snapshots_taken", []) + [(vm_id, body)]
        return {"quiesced": bool(body.get("quiesce")) and not getattr(self, "quiesce_fails",
                                                                       False),
                "memory": bool(memory),
                "disks": [{"alias": d["alias"], "volume": d["volume"]["volume"]}
                          for d in body["disks"]]}

    def create_overlay(self, volume, parent):
        self._check()
        if self._target(volume) in self._files():
            raise Conflict(f"volume {self._target(volume)} exists", volume=self._target(volume))
        self.overlays = getattr(self, "overlays", []) + [(volume, parent)]
        self._files()[self._target(volume)] = b""
        return {"volume": volume["volume"], "created": True}

    def chains(self, vm_id):
        self._check()
        if vm_id not in self.vms:
            raise VmNotFound(vm_id)
        jobs = getattr(self, "block_jobs", {})
        return {"disks": [{"alias": alias, "target": target, "chain": list(chain),
                           "block_job": jobs.get((vm_id, alias))}
                          for alias, (target, chain) in _with_targets(
                              self._chains_of(vm_id)).items()]}

    # -- backups (push mode): ``checkpoints_of``: vm id -> libvirt's checkpoint ids here
    # (a transient domain restarted has none: the body's ``checkpoints`` are redefined);
    # ``backup_fall_back``: a reason the next incremental is refused (then a full);
    # ``backup_error``: a KestrelError the next backup job fails with (nothing left).
    # ``backups``: each request body; ``backup_bytes``: target size per disk (default 1 MiB).

    def _libvirt_checkpoints(self, vm_id) -> list:
        return self.__dict__.setdefault("checkpoints_of", {}).setdefault(vm_id, [])

    def start_backup(self, vm_id, body):
        self._check()
        if self.vms.get(vm_id) not in ("Up", "Paused"):
            raise VmNotFound(vm_id)
        self.backups = getattr(self, "backups", []) + [body]
        known = self._libvirt_checkpoints(vm_id)
        for checkpoint in body.get("checkpoints", []):
            if checkpoint["id"] not in known:
                known.append(checkpoint["id"])
        fell_back = ""
        if body.get("incremental"):
            fell_back = self.__dict__.pop("backup_fall_back", "")
            if not fell_back and body["incremental"] not in known:
                fell_back = (f"checkpoint '{body['incremental']}' is unknown to libvirt; "
                             "a full backup was taken")
        answer = self._new_job("backup", f"vm/{vm_id}")
        job = self._jobs()[answer["job"]]
        error = self.__dict__.pop("backup_error", None)
        if error is not None:
            job.update(status="failed", error=error.to_dict())
            return answer
        disks = []
        for disk in body["disks"]:
            target = {**disk["target_volume"]}
            data = b"\0" * getattr(self, "backup_bytes", 1 << 20)
            self._files()[self._target(target)] = data
            disks.append({"alias": disk["alias"], "bytes": len(data),
                          "size_mib": target.get("size_mib", 0)})
        # As libvirt after the agent's pruning: only the new checkpoint, with no parent.
        pruned = list(known)
        known[:] = [body["checkpoint"]]
        xml = f"<domaincheckpoint><name>{body['checkpoint']}</name></domaincheckpoint>"
        job.update(status="succeeded", progress=100,
                   result={"checkpoint_xml": xml, "disks": disks, "fell_back": fell_back,
                           "pruned": pruned})
        return answer

    def checkpoints(self, vm_id):
        self._check()
        if vm_id not in self.vms:
            raise VmNotFound(vm_id)
        return {"checkpoints": list(self._libvirt_checkpoints(vm_id))}

    def delete_checkpoint(self, vm_id, checkpoint):
        self._check()
        known = self._libvirt_checkpoints(vm_id)
        if checkpoint not in known:
            raise NotFound("checkpoint", checkpoint)
        known.remove(checkpoint)
        return {"checkpoint": checkpoint, "deleted": True}


def _metadata_chains(xml: str, vm_id: str) -> dict:
    """Each disk's chain (top first) as a started VM's metadata lists it."""
    if not xml or ET.fromstring(xml).findtext("uuid") != vm_id:
        return {}
    refs = {ref.relpath: ref for ref in metadata.read(ET.fromstring(xml)).volumes}
    chains = {}
    for ref in refs.values():
        if not ref.alias:
            continue
        chain, node = [], ref
        while node is not None:
            chain.append(node.relpath)
            node = refs.get(node.parent) if node.parent else None
        chains[ref.alias] = chain
    return chains


def _with_targets(chains: dict) -> dict:
    """alias -> (a vdX target, chain): the fake's disks in alias order."""
    return {alias: (f"vd{chr(ord('a') + i)}", chain)
            for i, (alias, chain) in enumerate(sorted(chains.items()))}


@pytest.fixture
def cheap_argon2(monkeypatch):
    """argon2id with the least work, so tests spend their time on the logic; a hash
    carries its parameters, so verifying runs the production code path."""
    from argon2 import PasswordHasher

    from engine_lib.aaa import passwords
    monkeypatch.setattr(passwords, "_HASHER",
                        PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    monkeypatch.setattr(passwords, "DUMMY_HASH", passwords.hash_password("dummy"))


@pytest.fixture
def agents():
    """Address -> FakeAgent; the engine creates one on first contact."""
    return {}


@pytest.fixture
def unreachable_agent(agents):
    agent = agents["10.9.9.9"] = FakeAgent("unreachable")
    agent.reachable = False
    return "10.9.9.9"


@pytest.fixture(scope="session")
def postgres_server():
    with postgres.server() as url_template:
        yield url_template


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Every engine test runs on the embedded SQLite store and on real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/engine.db"
    template = request.getfixturevalue("postgres_server")
    return postgres.create_database(template, f"test_{next(_databases)}")


@pytest.fixture
def engine(tmp_path, agents, db_url):
    """An engine on a fresh database whose agents are FakeAgents by address."""

    def factory(address, port):
        return agents.setdefault(address, FakeAgent(address))

    # The tests' file domains live under /srv, allowed as an administrator would.
    (tmp_path / "engine").mkdir(exist_ok=True)
    (tmp_path / "engine" / "engine.conf").write_text("[storage]\nfile_domain_roots = /srv\n")
    eng = Engine.open(engine_dir=str(tmp_path / "engine"), db_url=db_url, agent_factory=factory)
    yield eng
    eng.close()


@pytest.fixture
def cluster(engine):
    engine.clusters.ensure("c1", virt_type="qemu")
    return "c1"
