"""The engine's client for host agents: HTTPS + mutual TLS, JSON in and out.

Errors come back typed, so callers never parse messages:
- agent not reachable (refused, timeout, DNS, reset) -> AgentUnreachable
  naming host:port and the cause; so is an agent that does not answer whole
  within the call's deadline;
- an answer larger than the call's cap -> ReplyTooLarge, cut at the cap;
- agent's certificate not signed by the engine CA, or not issued for the
  address we dialled -> CertificateError saying which; the agent refusing the
  engine's own certificate is a CertificateError as well;
- an error document from the agent -> the same class (ERRORS_BY_CODE) with
  the agent's message and details, plus ``details["agent"]``.

``AgentApi`` is what the engine asks of an agent: AgentClient implements it over
the wire, and the unit tests' in-process stand-ins declare it, so that a change
here shows up in them (tests/lib/test_agent_api.py compares the signatures).

Every call has one total deadline, for connecting, the TLS handshake, sending
and every read of the answer (a socket timeout alone bounds each read, so an
agent trickling a byte at a time could hold a call for ever), and a cap on the
answer's size, checked against Content-Length before reading and counted while
reading when the length is unknown (chunked). Both have defaults per kind of
call (an action waits on libvirt and hooks, a question does not; a list grows
with the host's VMs) that the client's arguments override.

Standard library only: the engine may run where only the stdlib is certain.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Protocol, runtime_checkable
from urllib.parse import quote

from engine_lib.protocol.errors import (
    AgentError,
    AgentUnreachable,
    CertificateError,
    KestrelError,
    ReplyTooLarge,
    rebuild,
)
from engine_lib.protocol.storage import MOUNT_TIMEOUT_S
from engine_lib.protocol.wire import API_PREFIX

# Default total deadlines: a call that changes something waits on libvirt, hooks and
# storage; a question is answered from the agent's registry or libvirt's counters.
ACTION_TIMEOUT = 30.0
QUERY_TIMEOUT = 10.0
# Default answer caps: an answer about one thing (a VM's status or XML, an action's
# result), and one that grows with the host's VMs (lists, stats, guest reports, events,
# a console tail of up to 1 MiB, JSON-escaped).
REPLY_CAP = 4 << 20
LIST_REPLY_CAP = 16 << 20
_READ_PIECE = 64 << 10
# A shutdown request waits for the guest on the agent; give the answer this much extra time.
SHUTDOWN_GRACE = 15.0
# Saving or restoring a guest's memory takes as long as writing or reading it.
HIBERNATE_TIMEOUT = 600.0
# Connecting storage waits for mount: give the agent's own limit some slack.
STORAGE_CONNECT_TIMEOUT = MOUNT_TIMEOUT_S + 15.0
# Image bytes go in pieces of this size, each with its own idle timeout instead of the
# call's total deadline (an upload of many GiB takes as long as it takes, but a peer that
# stops for STREAM_IDLE_TIMEOUT is gone).
STREAM_PIECE = 1 << 20
STREAM_IDLE_TIMEOUT = 60.0
_HOSTNAME_MISMATCH = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_REVOKED = 23  # X509_V_ERR_CERT_REVOKED


def client_context(pki_dir: str) -> ssl.SSLContext:
    """TLS client context: trust only the engine CA; present the engine certificate.

    Hostname checking stays on: the agent's certificate must name the address
    (IP SAN) or host name the engine dials. A certificate the CA revoked (its
    host was removed) is refused; the CRL is re-read for every client.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    ca = os.path.join(pki_dir, "ca.pem")
    cert, key = os.path.join(pki_dir, "engine.pem"), os.path.join(pki_dir, "engine.key")
    crl = os.path.join(pki_dir, "crl.pem")
    try:
        context.load_verify_locations(cafile=ca)
        context.load_cert_chain(cert, key)
        if os.path.exists(crl):
            context.load_verify_locations(cafile=crl)
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (OSError, ssl.SSLError) as exc:
        raise KestrelError(f"cannot load the engine's TLS material from {pki_dir}: {exc}; "
                           "run 'kestrel engine init' first", pki_dir=pki_dir) from None
    return context


def _not_modelled(client: object, method: str) -> NotImplementedError:
    return NotImplementedError(f"{type(client).__name__} does not model the agent's {method}()")


@runtime_checkable
class AgentApi(Protocol):
    """Every call the engine (its services and its loop) makes on a host's agent.

    ``Engine.agent(address, port)`` returns one. A stand-in that subclasses this
    and leaves a method out raises NotImplementedError for it rather than answer
    None, so a test that reaches an unmodelled call says which one.
    """

    # -- host --------------------------------------------------------------------------------

    def host_info(self, timeout: float | None = None) -> dict:
        raise _not_modelled(self, "host_info")

    def events(self, after: int = 0, timeout: float = 0) -> dict:
        raise _not_modelled(self, "events")

    def guests_info(self) -> dict:
        raise _not_modelled(self, "guests_info")

    # -- VM lifecycle ------------------------------------------------------------------------

    def list_vms(self) -> list[dict]:
        raise _not_modelled(self, "list_vms")

    def stats(self) -> dict:
        raise _not_modelled(self, "stats")

    def start_vm(self, xml: str, mode: str = "fresh") -> dict:
        raise _not_modelled(self, "start_vm")

    def restore_vm(self, xml: str, memory_volume: dict, keep_memory: bool = False) -> dict:
        raise _not_modelled(self, "restore_vm")

    def hibernate_vm(self, vm_id: str, memory_volume: dict) -> dict:
        raise _not_modelled(self, "hibernate_vm")

    def reboot_vm(self, vm_id: str) -> dict:
        raise _not_modelled(self, "reboot_vm")

    def vm_status(self, vm_id: str) -> dict:
        raise _not_modelled(self, "vm_status")

    def vm_xml(self, vm_id: str) -> str:
        raise _not_modelled(self, "vm_xml")

    def shutdown_vm(self, vm_id: str, timeout: float = 60) -> dict:
        raise _not_modelled(self, "shutdown_vm")

    def destroy_vm(self, vm_id: str) -> dict:
        raise _not_modelled(self, "destroy_vm")

    def remove_vm(self, vm_id: str) -> dict:
        raise _not_modelled(self, "remove_vm")

    def console_log(self, vm_id: str, nbytes: int = 8192) -> str:
        raise _not_modelled(self, "console_log")

    # -- devices and storage -----------------------------------------------------------------

    def plug_device(self, vm_id: str, xml: str, volume: dict | None = None,
                    luns: dict[str, str] | None = None, chain: list[dict] | None = None) -> dict:
        raise _not_modelled(self, "plug_device")

    def unplug_device(self, vm_id: str, alias: str, timeout: float = 20) -> dict:
        raise _not_modelled(self, "unplug_device")

    def delete_volumes(self, volumes: list[dict]) -> list[dict]:
        raise _not_modelled(self, "delete_volumes")

    def resize_volume(self, volume: dict) -> dict:
        raise _not_modelled(self, "resize_volume")

    def connect_storage(self, name: str, export: str, path: str, options: str = "") -> dict:
        raise _not_modelled(self, "connect_storage")

    def disconnect_storage(self, name: str) -> dict:
        raise _not_modelled(self, "disconnect_storage")

    # -- trust ---------------------------------------------------------------------------------

    def install_crl(self, crl: str) -> dict:
        raise _not_modelled(self, "install_crl")

    # -- migration ---------------------------------------------------------------------------

    def prepare_incoming(self, xml: str) -> dict:
        raise _not_modelled(self, "prepare_incoming")

    def migrate_vm(self, vm_id: str, destination_uri: str, paths: dict[str, str],
                   policy: str = "minimal_downtime", bandwidth_mibps: int | None = None,
                   tls: bool = False) -> dict:
        raise _not_modelled(self, "migrate_vm")

    def migration(self, vm_id: str) -> dict:
        raise _not_modelled(self, "migration")

    def cancel_migration(self, vm_id: str) -> dict:
        raise _not_modelled(self, "cancel_migration")

    # -- volume jobs (uploads, imports, exports, copies, seals) -----------------------------

    def job(self, job_id: str, wait: float = 0) -> dict:
        raise _not_modelled(self, "job")

    def forget_job(self, job_id: str) -> dict:
        raise _not_modelled(self, "forget_job")

    def start_upload(self, volume: dict, *, image_format: str, length: int,
                     content_type: str) -> dict:
        raise _not_modelled(self, "start_upload")

    def send_upload(self, job_id: str, stream: BinaryIO, length: int,
                    progress: Callable[[int], None] | None = None) -> dict:
        raise _not_modelled(self, "send_upload")

    def commit_upload(self, job_id: str, sha256: str) -> dict:
        raise _not_modelled(self, "commit_upload")

    def start_import(self, volume: dict, *, url: str, image_format: str, sha256: str,
                     content_type: str, timeout_s: float) -> dict:
        raise _not_modelled(self, "start_import")

    def start_export(self, volume: dict, chain: list[dict], fmt: str) -> dict:
        raise _not_modelled(self, "start_export")

    def read_export(self, job_id: str, out: BinaryIO,
                    progress: Callable[[int], None] | None = None) -> dict:
        raise _not_modelled(self, "read_export")

    def copy_volume(self, source: dict, chain: list[dict], target: dict) -> dict:
        raise _not_modelled(self, "copy_volume")

    def seal_volume(self, volume: dict, hostname: str = "") -> dict:
        raise _not_modelled(self, "seal_volume")

    # -- snapshots ---------------------------------------------------------------------------

    def create_snapshot(self, vm_id: str, body: dict) -> dict:
        raise _not_modelled(self, "create_snapshot")

    def create_overlay(self, volume: dict, parent: dict) -> dict:
        raise _not_modelled(self, "create_overlay")

    def chains(self, vm_id: str) -> dict:
        raise _not_modelled(self, "chains")

    def start_merge(self, vm_id: str, body: dict) -> dict:
        raise _not_modelled(self, "start_merge")

    def merge_volumes(self, base: dict, top: dict, child: dict | None,
                      chain: list[dict]) -> dict:
        raise _not_modelled(self, "merge_volumes")

    # -- backups -------------------------------------------------------------------

    def start_backup(self, vm_id: str, body: dict) -> dict:
        raise _not_modelled(self, "start_backup")

    def checkpoints(self, vm_id: str) -> dict:
        raise _not_modelled(self, "checkpoints")

    def delete_checkpoint(self, vm_id: str, checkpoint: str) -> dict:
        raise _not_modelled(self, "delete_checkpoint")


class AgentClient:
    """One host agent, over HTTPS (implements AgentApi and a few calls beyond it).

    Thread-safe: every request uses its own connection.

    ``timeout`` is the total deadline of an action (calls that wait longer on the
    agent, a shutdown or a hibernation, get at least theirs); questions get
    ``query_timeout`` (never more than ``timeout``). ``reply_cap`` and
    ``list_reply_cap`` bound the answers, in bytes.
    """

    def __init__(self, address: str, port: int, pki_dir: str, timeout: float = ACTION_TIMEOUT,
                 query_timeout: float = QUERY_TIMEOUT, reply_cap: int = REPLY_CAP,
                 list_reply_cap: int = LIST_REPLY_CAP):
        self.address = address
        self.port = port
        self.timeout = timeout
        self.query_timeout = min(query_timeout, timeout)
        self.reply_cap = reply_cap
        self.list_reply_cap = list_reply_cap
        self.endpoint = f"{address}:{port}"
        self._context = client_context(pki_dir)

    # -- API ---------------------------------------------------------------------

    def host_info(self, timeout: float | None = None) -> dict:
        return self._query("GET", "/host", timeout=timeout)

    def list_vms(self) -> list[dict]:
        return self._query("GET", "/vms", cap=self.list_reply_cap)["vms"]

    def start_vm(self, xml: str, mode: str = "fresh") -> dict:
        return self._call("POST", "/vms", {"xml": xml, "mode": mode})

    def restore_vm(self, xml: str, memory_volume: dict, keep_memory: bool = False) -> dict:
        """Start mode "restore": the hibernated VM continues from its memory volume
        (``keep_memory``: a snapshot's, which stays for the next revert)."""
        body = {"xml": xml, "mode": "restore", "memory_volume": memory_volume}
        if keep_memory:
            body["keep_memory"] = True
        return self._call("POST", "/vms", body, timeout=max(self.timeout, HIBERNATE_TIMEOUT))

    def hibernate_vm(self, vm_id: str, memory_volume: dict) -> dict:
        """Save the VM's memory to ``memory_volume`` ({domain, image, volume}); Down after."""
        return self._call("POST", f"/vms/{_seg(vm_id)}/hibernate",
                          {"memory_volume": memory_volume},
                          timeout=max(self.timeout, HIBERNATE_TIMEOUT))

    def reboot_vm(self, vm_id: str) -> dict:
        return self._call("POST", f"/vms/{_seg(vm_id)}/reboot")

    def vm_status(self, vm_id: str) -> dict:
        return self._query("GET", f"/vms/{_seg(vm_id)}")

    def vm_xml(self, vm_id: str) -> str:
        return self._query("GET", f"/vms/{_seg(vm_id)}/xml")["xml"]

    def shutdown_vm(self, vm_id: str, timeout: float = 60) -> dict:
        return self._call("POST", f"/vms/{_seg(vm_id)}/shutdown", {"timeout": timeout},
                          timeout=max(self.timeout, timeout + SHUTDOWN_GRACE))

    def destroy_vm(self, vm_id: str) -> dict:
        return self._call("POST", f"/vms/{_seg(vm_id)}/destroy")

    def pause_vm(self, vm_id: str) -> dict:
        return self._call("POST", f"/vms/{_seg(vm_id)}/pause")

    def resume_vm(self, vm_id: str) -> dict:
        return self._call("POST", f"/vms/{_seg(vm_id)}/resume")

    def remove_vm(self, vm_id: str) -> dict:
        return self._call("DELETE", f"/vms/{_seg(vm_id)}")

    def delete_volumes(self, volumes: list[dict]) -> list[dict]:
        return self._call("POST", "/volumes/delete", {"volumes": volumes})["volumes"]

    def resize_volume(self, volume: dict) -> dict:
        """Grow a volume (live when a VM on that host uses it); never shrinks."""
        return self._call("POST", "/volumes/resize", {"volume": volume})

    def connect_storage(self, name: str, export: str, path: str, options: str = "") -> dict:
        """Mount an NFS domain's export at path on the host and serve it
        ({name, path, mounted, changed}); a failed mount is AgentError code MountFailed."""
        body = {"name": name, "type": "nfs", "export": export, "path": path}
        if options:
            body["options"] = options
        return self._call("POST", "/storage/connect", body,
                          timeout=max(self.timeout, STORAGE_CONNECT_TIMEOUT))

    def disconnect_storage(self, name: str) -> dict:
        return self._call("POST", "/storage/disconnect", {"name": name},
                          timeout=max(self.timeout, STORAGE_CONNECT_TIMEOUT))

    def install_crl(self, crl: str) -> dict:
        """Hand the host the engine CA's revocation list (PEM) for the agent, libvirt and
        QEMU: {installed: [paths], libvirtd_reloaded}."""
        return self._call("PUT", "/pki/crl", {"crl": crl})

    def console_log(self, vm_id: str, nbytes: int = 8192) -> str:
        return self._query("GET", f"/vms/{_seg(vm_id)}/console?bytes={int(nbytes)}",
                           cap=self.list_reply_cap)["data"]

    def stats(self) -> dict:
        """The VM poll: {"host": {...}, "vms": [every VM list_vms() lists, the running
        ones with their counters and rates]}."""
        return self._query("GET", "/stats", cap=self.list_reply_cap)

    def vm_stats(self, vm_id: str) -> dict:
        return self._query("GET", f"/vms/{_seg(vm_id)}/stats")

    def plug_device(self, vm_id: str, xml: str, volume: dict | None = None,
                    luns: dict[str, str] | None = None, chain: list[dict] | None = None) -> dict:
        """Hotplug a <disk> or <interface>; returns the live device XML. ``luns``: the
        registered LUNs (name -> device path) the device's placeholders name; ``chain``
        the volumes under ``volume`` (a thin disk's backing chain, nearest first)."""
        body: dict[str, Any] = {"xml": xml}
        if volume is not None:
            body["volume"] = volume
        if chain:
            body["chain"] = chain
        if luns:
            body["luns"] = luns
        return self._call("POST", f"/vms/{_seg(vm_id)}/devices", body)

    def unplug_device(self, vm_id: str, alias: str, timeout: float = 20) -> dict:
        return self._call("DELETE", f"/vms/{_seg(vm_id)}/devices/{_seg(alias)}?timeout={timeout:g}",
                          timeout=max(self.timeout, timeout + SHUTDOWN_GRACE))

    def prepare_incoming(self, xml: str) -> dict:
        """Destination side of a migration: returns its resolved XML and ``paths``."""
        return self._call("POST", "/vms", {"xml": xml, "mode": "incoming"})

    def migrate_vm(self, vm_id: str, destination_uri: str, paths: dict[str, str],
                   policy: str = "minimal_downtime", bandwidth_mibps: int | None = None,
                   tls: bool = False) -> dict:
        """Source side: starts the migration and returns at once (see migration()).
        ``tls``: QEMU's migration stream too goes over TLS (VIR_MIGRATE_TLS)."""
        body: dict[str, Any] = {"destination_uri": destination_uri, "paths": paths,
                                "policy": policy}
        if bandwidth_mibps:
            body["bandwidth_mibps"] = bandwidth_mibps
        if tls:
            body["tls"] = True
        return self._call("POST", f"/vms/{_seg(vm_id)}/migrate", body)

    def migration(self, vm_id: str) -> dict:
        return self._query("GET", f"/vms/{_seg(vm_id)}/migration")

    def cancel_migration(self, vm_id: str) -> dict:
        return self._call("POST", f"/vms/{_seg(vm_id)}/migration/cancel")

    # -- volume jobs ---------------------------------------------------------------

    def job(self, job_id: str, wait: float = 0) -> dict:
        """{id, kind, status, phase, progress, done_bytes, total_bytes, result, error};
        a running job is answered when it ends or after ``wait`` seconds (long poll)."""
        if not wait:
            return self._query("GET", f"/jobs/{_seg(job_id)}")
        return self._query("GET", f"/jobs/{_seg(job_id)}?wait={wait:g}",
                           timeout=self.query_timeout + wait)

    def forget_job(self, job_id: str) -> dict:
        """Aborts a running job (the agent cleans up) or forgets a finished one."""
        return self._call("DELETE", f"/jobs/{_seg(job_id)}")

    def start_upload(self, volume: dict, *, image_format: str, length: int,
                     content_type: str) -> dict:
        return self._call("POST", "/images/uploads",
                          {"volume": volume, "image_format": image_format, "length": length,
                           "content_type": content_type})

    def send_upload(self, job_id: str, stream: BinaryIO, length: int,
                    progress: Callable[[int], None] | None = None) -> dict:
        """Streams ``length`` bytes of ``stream`` to the upload job, hashing as it reads.

        Returns {received, sha256 (what was sent), agent_sha256}. A stream that ends
        early is refused here (the agent sees a short body and fails the job).
        """
        digest = hashlib.sha256()
        path = f"{API_PREFIX}/images/uploads/{_seg(job_id)}"
        with self._stream("PUT", path, {"Content-Length": str(length),
                                        "Content-Type": "application/octet-stream"}) as conn:
            sent = 0
            while sent < length:
                piece = _local_io(stream.read, min(STREAM_PIECE, length - sent))
                if not piece:
                    raise KestrelError(f"the image ended after {sent} of its {length} "
                                       "bytes (was it changed while uploading?)",
                                       sent=sent, length=length)
                digest.update(piece)
                try:
                    conn.send(piece)
                except OSError:
                    break  # the agent stopped reading: its answer says why
                sent += len(piece)
                if progress is not None:
                    progress(sent)
            response = conn.getresponse()
            document = self._document(response, "PUT", path)
        if sent < length:
            raise AgentError(f"agent {self.endpoint} stopped receiving the upload after "
                             f"{sent} of {length} bytes", agent=self.endpoint)
        return {"received": document.get("received", sent), "sha256": digest.hexdigest(),
                "agent_sha256": document.get("sha256", "")}

    def commit_upload(self, job_id: str, sha256: str) -> dict:
        return self._call("POST", f"/images/uploads/{_seg(job_id)}/commit", {"sha256": sha256})

    def start_import(self, volume: dict, *, url: str, image_format: str, sha256: str,
                     content_type: str, timeout_s: float) -> dict:
        return self._call("POST", "/images/imports",
                          {"volume": volume, "url": url, "image_format": image_format,
                           "sha256": sha256, "content_type": content_type,
                           "timeout_s": timeout_s})

    def start_export(self, volume: dict, chain: list[dict], fmt: str) -> dict:
        return self._call("POST", "/images/exports",
                          {"volume": volume, "chain": chain, "format": fmt})

    def read_export(self, job_id: str, out: BinaryIO,
                    progress: Callable[[int], None] | None = None) -> dict:
        """Streams a finished export job's file into ``out``; {received, sha256}.
        An answer shorter than its Content-Length is an error (the agent went away)."""
        digest = hashlib.sha256()
        path = f"{API_PREFIX}/images/exports/{_seg(job_id)}"
        with self._stream("GET", path, {"Accept": "application/octet-stream"}) as conn:
            response = conn.getresponse()
            if response.status >= 400:
                self._document(response, "GET", path)
            length, received = response.length, 0
            while piece := response.read(STREAM_PIECE):
                digest.update(piece)
                _local_io(out.write, piece)
                received += len(piece)
                if progress is not None:
                    progress(received)
        if length is not None and received != length:
            raise AgentError(f"agent {self.endpoint} sent {received} of the export's "
                             f"{length} bytes", agent=self.endpoint)
        return {"received": received, "sha256": digest.hexdigest()}

    def copy_volume(self, source: dict, chain: list[dict], target: dict) -> dict:
        return self._call("POST", "/volumes/copy",
                          {"source": source, "chain": chain, "target": target})

    def seal_volume(self, volume: dict, hostname: str = "") -> dict:
        return self._call("POST", "/volumes/seal", {"volume": volume, "hostname": hostname})

    def create_snapshot(self, vm_id: str, body: dict) -> dict:
        """A live snapshot of a running VM ({snapshot, disks, memory_volume, quiesce,
        metadata}): {quiesced, memory, disks}. Saving memory takes as long as hibernating."""
        return self._call("POST", f"/vms/{_seg(vm_id)}/snapshots", body,
                          timeout=max(self.timeout, HIBERNATE_TIMEOUT))

    def create_overlay(self, volume: dict, parent: dict) -> dict:
        """A qcow2 overlay ``volume`` on ``parent`` (a stopped VM's snapshot or revert)."""
        return self._call("POST", "/volumes/overlay", {"volume": volume, "parent": parent})

    def chains(self, vm_id: str) -> dict:
        """The VM's live chains, top first per disk, with any block job on each."""
        return self._query("GET", f"/vms/{_seg(vm_id)}/chains")

    def start_merge(self, vm_id: str, body: dict) -> dict:
        """Live merge on a running VM (a job): {alias, base, top, top_is_active, metadata}."""
        return self._call("POST", f"/vms/{_seg(vm_id)}/merges", body)

    def merge_volumes(self, base: dict, top: dict, child: dict | None,
                      chain: list[dict]) -> dict:
        """Offline merge of top into base, child rebased onto base (a job)."""
        return self._call("POST", "/volumes/merge",
                          {"base": base, "top": top, "child": child, "chain": chain})

    def start_backup(self, vm_id: str, body: dict) -> dict:
        """Push backup of a running VM into new target volumes: {job}; the job's result is
        {checkpoint_xml, disks: [{alias, bytes, size_mib}], fell_back, pruned, copy_ms}."""
        return self._call("POST", f"/vms/{_seg(vm_id)}/backups", body)

    def checkpoints(self, vm_id: str) -> dict:
        """The checkpoints libvirt knows for the VM here: {checkpoints: [id, ...]}."""
        return self._call("GET", f"/vms/{_seg(vm_id)}/checkpoints")

    def delete_checkpoint(self, vm_id: str, checkpoint: str) -> dict:
        return self._call("DELETE", f"/vms/{_seg(vm_id)}/checkpoints/{_seg(checkpoint)}")

    def openapi(self) -> dict:
        return self._query("GET", "/openapi.json")

    def guest_info(self, vm_id: str) -> dict:
        """qemu-guest-agent's report; GuestAgentUnavailable when it does not answer."""
        return self._call("GET", f"/vms/{_seg(vm_id)}/guest")

    def guests_info(self) -> dict:
        """Every Up VM's guest-agent report: {"guests": {id: report}, "unavailable": {id: why}}.
        An action's deadline: the agent waits on each guest's agent (in parallel)."""
        return self._call("GET", "/guests", cap=self.list_reply_cap)

    def events(self, after: int = 0, timeout: float = 0) -> dict:
        """VM status changes after ``after`` (long poll up to ``timeout`` s):
        {"instance", "seq", "gap", "events": [...]}. One answer per call (the agent
        keeps its last thousand events), so a deadline and a cap per answer bound it."""
        return self._call("GET", f"/events?after={int(after)}&timeout={timeout:g}",
                          timeout=self.timeout + timeout, cap=self.list_reply_cap)

    # -- transport ---------------------------------------------------------------

    def _query(self, method: str, path: str, timeout: float | None = None,
               cap: int | None = None) -> Any:
        return self._call(method, path, timeout=timeout or self.query_timeout, cap=cap)

    def _call(self, method: str, path: str, body: dict | None = None,
              timeout: float | None = None, cap: int | None = None) -> Any:
        status, data = self._request(method, API_PREFIX + path, body, timeout or self.timeout,
                                     cap or self.reply_cap)
        return self._decode(status, data, method, path)

    def _request(self, method: str, path: str, body: dict | None,
                 timeout: float, cap: int) -> tuple[int, bytearray]:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn = response = None
        try:
            with self._transport_errors(f"no answer within {timeout:g} s"):
                conn = _Connection(self.address, self.port, self._context,
                                   deadline=time.monotonic() + timeout)
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                return response.status, self._read(response, cap, method, path)
        finally:
            # An answer cut at its cap or deadline ends with its connection.
            if response is not None:
                response.close()
            if conn is not None:
                conn.close()

    @contextlib.contextmanager
    def _stream(self, method: str, path: str,
                headers: dict[str, str]) -> Iterator[http.client.HTTPSConnection]:
        """A connection whose request is sent (headers only) and whose every socket
        operation waits at most STREAM_IDLE_TIMEOUT: the caller sends or reads the body."""
        conn = http.client.HTTPSConnection(self.address, self.port,
                                           timeout=STREAM_IDLE_TIMEOUT, context=self._context)
        try:
            with self._transport_errors(f"idle for {STREAM_IDLE_TIMEOUT:g} s"):
                conn.putrequest(method, path, skip_accept_encoding=True)
                for name, value in headers.items():
                    conn.putheader(name, value)
                conn.endheaders()
                yield conn
        finally:
            conn.close()

    def _document(self, response: http.client.HTTPResponse, method: str, path: str) -> dict:
        """A JSON answer (capped); the agent's error raised as its class."""
        return self._decode(response.status, self._read(response, self.reply_cap, method, path),
                            method, path)

    def _decode(self, status: int, data: bytes | bytearray, method: str, path: str) -> Any:
        """The answer's JSON document; an error document raised as its class."""
        try:
            document = json.loads(data) if data else {}
        except ValueError:
            raise AgentError(f"agent {self.endpoint} answered {method} {path} with "
                             f"HTTP {status} and a body that is not JSON",
                             agent=self.endpoint, status=status) from None
        if status >= 400:
            raise self._error(status, document, method, path)
        return document

    @contextlib.contextmanager
    def _transport_errors(self, timed_out: str) -> Iterator[None]:
        """Transport failures as typed errors naming the agent (see the module's doc)."""
        try:
            yield
        except ssl.SSLCertVerificationError as exc:
            if exc.verify_code in _HOSTNAME_MISMATCH:
                reason = f"presented a certificate not issued for '{self.address}'"
            elif exc.verify_code == _REVOKED:
                reason = "presented a certificate the engine CA revoked (its host was removed)"
            else:
                reason = "presented a certificate not signed by the engine CA"
            raise CertificateError(f"agent {self.endpoint} {reason} ({exc.verify_message})",
                                   agent=self.endpoint) from None
        except ssl.SSLError as exc:
            raise CertificateError(f"TLS with agent {self.endpoint} failed: the agent refused "
                                   f"the engine's certificate or spoke no TLS "
                                   f"({exc.reason or exc})", agent=self.endpoint) from None
        except socket.gaierror as exc:
            raise AgentUnreachable(f"agent {self.endpoint} unreachable: cannot resolve "
                                   f"'{self.address}' ({exc.strerror})",
                                   agent=self.endpoint, cause="dns") from None
        except TimeoutError:
            raise AgentUnreachable(f"agent {self.endpoint} unreachable: {timed_out}",
                                   agent=self.endpoint, cause="timeout") from None
        except (OSError, http.client.HTTPException) as exc:
            cause = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise AgentUnreachable(f"agent {self.endpoint} unreachable: {cause}",
                                   agent=self.endpoint, cause=cause) from None

    def _read(self, response: http.client.HTTPResponse, cap: int, method: str,
              path: str) -> bytearray:
        """The body, refused before reading when its Content-Length is over ``cap``, else
        read in pieces and cut as soon as it passes ``cap`` (chunked, or no length)."""
        if response.length is not None and response.length > cap:
            raise self._too_large(cap, method, path, f"announced {response.length} bytes")
        body = bytearray()
        while piece := response.read(min(_READ_PIECE, cap + 1 - len(body))):
            body += piece
            if len(body) > cap:
                raise self._too_large(cap, method, path, "sent more")
        return body

    def _too_large(self, cap: int, method: str, path: str, what: str) -> ReplyTooLarge:
        return ReplyTooLarge(f"agent {self.endpoint} answered {method} {path} with more than "
                             f"{cap} bytes ({what}); the answer was cut there",
                             agent=self.endpoint, limit=cap)

    def _error(self, status: int, document: dict, method: str, path: str) -> KestrelError:
        error = document.get("error") if isinstance(document, dict) else None
        if not isinstance(error, dict) or "message" not in error:
            return AgentError(f"agent {self.endpoint} answered {method} {path} with HTTP "
                              f"{status}", agent=self.endpoint, status=status)
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
        return rebuild_error(error.get("code", ""), str(error["message"]),
                             {**details, "agent": self.endpoint})


class _Connection(http.client.HTTPSConnection):
    """HTTPS to one agent within one deadline: connecting, the TLS handshake, sending and
    each read get only the time left of it (the handshake is one bounded operation)."""

    def __init__(self, address: str, port: int, context: ssl.SSLContext, deadline: float):
        super().__init__(address, port, timeout=_time_left(deadline), context=context)
        self._deadline = deadline
        self._create_connection = self._open

    def _open(self, address, timeout, source_address):
        sock = socket.create_connection(address, _time_left(self._deadline), source_address)
        sock.settimeout(_time_left(self._deadline))  # what is left for the handshake
        return sock

    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self._deadline)


class _DeadlineSocket:
    """A connected socket whose every send and receive waits only for what is left of
    the call's deadline; ``makefile`` reads through it (http.client reads that way)."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock = sock
        self._deadline = deadline
        # As a socket's own: closed for good once it and every reader made of it are.
        self._readers = 0
        self._closed = False

    def _arm(self) -> None:
        self._sock.settimeout(_time_left(self._deadline))

    def sendall(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            self._arm()
            view = view[self._sock.send(view):]

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buffer, nbytes)

    def makefile(self, mode: str = "rb", *_args, **_kwargs) -> io.BufferedReader:
        self._readers += 1
        return io.BufferedReader(_Reader(self))

    def reader_closed(self) -> None:
        self._readers -= 1
        if self._closed and not self._readers:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if not self._readers:
            self._sock.close()

    def __getattr__(self, name: str):
        return getattr(self._sock, name)  # getpeercert, fileno, ...


class _Reader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket):
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock.reader_closed()
        super().close()


def _time_left(deadline: float) -> float:
    """Seconds left until ``deadline``; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the call's deadline passed")
    return left


def rebuild_error(code: str, message: str, details: dict) -> KestrelError:
    """The exception the agent raised, rebuilt from its wire form; an unknown code
    becomes AgentError (the agent is the one that answered)."""
    return rebuild(code, message, details, unknown=AgentError)


def _local_io(operation: Callable[[Any], Any], argument: Any) -> Any:
    """Reading or writing the local file of a stream: its failure is no agent's."""
    try:
        return operation(argument)
    except OSError as exc:
        raise KestrelError(f"local file: {exc.strerror or exc}") from None


def _seg(value: str) -> str:
    return quote(str(value), safe="")
