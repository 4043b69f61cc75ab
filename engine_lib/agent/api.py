"""The agent's HTTP API, independent of the transport: routes, validation, errors.

``Api.handle(method, path, query, body)`` returns ``(status, json_document)``.
A request is validated completely before anything on the host changes, so a
malformed request (400) has no effect. Errors travel as
``{"error": {"code", "message", "details"}}`` with the error's HTTP status;
the engine's broker turns ``code`` back into the same exception class.

The OpenAPI document is generated from the route table below, so the
published API cannot drift from the one served.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import engine_lib
from engine_lib.agent import backup_request, crl, merges, seal, snapshot_request
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.images import Download, Images
from engine_lib.agent.jobs import Jobs
from engine_lib.agent.storage_connections import StorageConnections
from engine_lib.agent.volumes import VolumeLocation
from engine_lib.protocol.convergence import POLICIES as MIGRATION_POLICIES
from engine_lib.protocol.errors import InvalidSpec, KestrelError, NotFound
from engine_lib.protocol.metadata import VolumeRef
from engine_lib.protocol.wire import API_PREFIX

log = logging.getLogger("kestrel.agent.api")

MAX_CONSOLE_BYTES = 1024 * 1024
DEFAULT_CONSOLE_BYTES = 8192
DEFAULT_SHUTDOWN_TIMEOUT = 60.0
MAX_SHUTDOWN_TIMEOUT = 3600.0
DEFAULT_UNPLUG_TIMEOUT = 20.0
MAX_EVENTS_TIMEOUT = 60.0
# GET /jobs/{job}?wait=: how long one poll may wait for the job to end.
MAX_JOB_WAIT = 10.0
MAX_UNPLUG_TIMEOUT = 600.0
MAX_JSON_DEPTH = 32
_VOLUME_KEYS = {"domain", "image", "volume", "alias", "format", "size_mib", "disk", "create",
                "parent", "parent_format"}


@dataclass
class Request:
    params: dict[str, str]
    query: dict[str, list[str]]
    body: dict[str, Any]
    stream: Any = None  # a streamed request body (route.stream == "in"): a binary file
    length: int = 0  # its Content-Length


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # e.g. "/vms/{id}/xml", below API_PREFIX
    operation: str  # OpenAPI operationId and the Api method that serves it
    summary: str
    body: dict | None = None  # JSON schema of the request body
    query: dict = field(default_factory=dict)  # name -> JSON schema
    # "in": the body is raw bytes streamed to the operation (no 16 MiB limit);
    # "out": the operation answers a Download, streamed as application/octet-stream.
    stream: str = ""
    regex: re.Pattern = field(init=False, compare=False)

    def __post_init__(self):
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", API_PREFIX + self.path)
        object.__setattr__(self, "regex", re.compile(f"^{pattern}$"))


_VOLUME_SCHEMA = {
    "type": "object", "required": ["domain", "image", "volume"],
    "properties": {k: {"type": "string"} for k in ("domain", "image", "volume", "alias",
                                                   "format", "disk", "parent",
                                                   "parent_format")}
    | {"size_mib": {"type": "integer"}, "create": {"type": "boolean"}},
}
_FORMAT = {"type": "string", "enum": ["qcow2", "raw"]}
_IMAGE_VOLUME = {
    "type": "object", "required": ["domain", "image", "volume"], "additionalProperties": False,
    "properties": {"domain": {"type": "string"}, "image": {"type": "string"},
                   "volume": {"type": "string"}, "format": _FORMAT,
                   "size_mib": {"type": "integer", "minimum": 0,
                                "description": "grow to this size (0: the image's own)"}}}
_SOURCE_VOLUME = {
    "type": "object", "required": ["domain", "image", "volume"], "additionalProperties": False,
    "properties": {"domain": {"type": "string"}, "image": {"type": "string"},
                   "volume": {"type": "string"}, "format": _FORMAT}}
_SNAPSHOT_VOLUME = {
    "type": "object", "required": ["domain", "image", "volume"], "additionalProperties": False,
    "properties": {"domain": {"type": "string"}, "image": {"type": "string"},
                   "volume": {"type": "string"}, "format": _FORMAT,
                   "size_mib": {"type": "integer", "minimum": 0}}}
_CHAIN = {"type": "array", "description": "the volume's parents on its domain, nearest "
          "first; the copy is flattened through exactly these (nothing is probed)",
          "items": {"type": "object", "required": ["image", "volume", "format"],
                    "properties": {"image": {"type": "string"}, "volume": {"type": "string"},
                                   "format": _FORMAT}}}
_IMAGE_FORMAT = {"type": "string", "enum": ["", "qcow2", "raw", "vmdk", "vdi", "vhdx"],
                 "default": "", "description": "the declared source format ('' = detect); "
                 "an image that is not what it is declared is refused"}
_CONTENT_TYPE = {"type": "string", "enum": ["data", "iso"], "default": "data",
                 "description": "iso: a raw ISO image for CD-ROMs (volume.format raw)"}
_JOB_NOTE = ("Answers {job: id}; poll GET /jobs/{job}. A failed job's error names the field "
             "of this request (image_format, length, url, sha256, volume...; 'image' is the "
             "image's bytes: a backing file, a data file, corruption) and nothing is left "
             "on the domain.")

ROUTES = (
    Route("GET", "/openapi.json", "openapi", "This document."),
    Route("GET", "/host", "host_info", "Host facts: identity, CPUs, memory, versions, "
          "running VMs, storage domains, SSH host keys."),
    Route("GET", "/vms", "list_vms", "Every VM in this agent's registry with its status; "
          "a VM that went Down stays listed, with its exit reason, until removed."),
    Route("POST", "/vms", "start_vm", "Start a VM from engine-rendered domain XML "
          "(placeholders resolved, volumes marked create='yes' created if missing; any other "
          "missing volume fails the start). A VM already running here "
          "is reported with started=false, not started twice.",
          body={"type": "object", "required": ["xml"], "additionalProperties": False,
                "properties": {"xml": {"type": "string"},
                               "memory_volume": _VOLUME_SCHEMA,
                               "mode": {"type": "string", "enum": ["fresh", "incoming",
                                                                   "restore"],
                                        "default": "fresh"},
                               "keep_memory": {"type": "boolean", "default": False,
                                               "description": "restore: keep the memory "
                                               "volume afterwards (a snapshot's, reverted "
                                               "to again); by default it is deleted"}}}),
    Route("GET", "/vms/{id}", "vm_status", "Status of one VM."),
    Route("GET", "/vms/{id}/xml", "vm_xml", "The live domain XML (with device aliases)."),
    Route("POST", "/vms/{id}/shutdown", "shutdown_vm", "Graceful shutdown: ACPI power "
          "button, then destroy after the timeout (forced=true says it came to that).",
          body={"type": "object", "additionalProperties": False,
                "properties": {"timeout": {"type": "number", "minimum": 0,
                                           "maximum": MAX_SHUTDOWN_TIMEOUT,
                                           "default": DEFAULT_SHUTDOWN_TIMEOUT}}}),
    Route("POST", "/vms/{id}/destroy", "destroy_vm", "Power off at once."),
    Route("POST", "/vms/{id}/hibernate", "hibernate_vm", "Save the running VM's memory to "
          "a memory volume on a storage domain (before_vm_hibernate hooks; SavingState); "
          "the VM is then Down with exit reason 'saved'. Start it again with mode "
          "'restore' and the same memory_volume, on this host or another.",
          body={"type": "object", "required": ["memory_volume"], "additionalProperties": False,
                "properties": {"memory_volume": _VOLUME_SCHEMA}}),
    Route("POST", "/vms/{id}/reboot", "reboot_vm", "Reboot the guest: ACPI (the guest "
          "restarts itself; the QEMU process stays), or a hard reset when libvirt cannot "
          "send ACPI to this domain (method says which)."),
    Route("POST", "/vms/{id}/pause", "pause_vm", "Pause the guest's CPUs (status Paused). "
          "Pausing a paused VM changes nothing."),
    Route("POST", "/vms/{id}/resume", "resume_vm", "Let a paused VM run again (status Up). "
          "Resuming a running VM changes nothing."),
    Route("DELETE", "/vms/{id}", "remove_vm", "Undefine a VM that is not running. "
          "Its volumes are kept."),
    Route("GET", "/vms/{id}/console", "console_log", "The tail of the serial console log.",
          query={"bytes": {"type": "integer", "minimum": 1, "maximum": MAX_CONSOLE_BYTES,
                           "default": DEFAULT_CONSOLE_BYTES}}),
    Route("GET", "/vms/{id}/guest", "guest_info", "What qemu-guest-agent reports: hostname, "
          "os, users, filesystems, interfaces (name, mac, ips), ips (without loopback and "
          "link-local), timezone. 409 GuestAgentUnavailable when the agent does not answer "
          "within 5 s (not installed, not started, VM not running)."),
    Route("GET", "/guests", "guests_info", "The guest-agent report of every Up VM, asked in "
          "parallel: {guests: {vm id: report as GET /vms/{id}/guest}, unavailable: {vm id: "
          "why}}. One request for the engine's VM poll instead of one per VM."),
    Route("GET", "/stats", "stats", "The engine's VM poll: every VM GET /vms lists, each "
          "running one with its CPU, memory and balloon, disk and NIC counters and rates "
          "(one libvirt call for all); the host's CPU, memory, load, NIC and disk rates, VM "
          "counts and the balloon policy's last round."),
    Route("GET", "/vms/{id}/stats", "vm_stats", "One VM's CPU, memory and balloon, disk and "
          "NIC counters."),
    Route("POST", "/vms/{id}/devices", "plug_device", "Hotplug a <disk> or <interface> "
          "(with a ua- alias) into a running VM; its volume is created first when given "
          "and missing (an overlay on its parent; 'chain' lists the volumes under it, "
          "nearest first, each of which must exist); before_device_create hooks edit the "
          "device XML.",
          body={"type": "object", "required": ["xml"], "additionalProperties": False,
                "properties": {"xml": {"type": "string"}, "volume": _VOLUME_SCHEMA,
                               "chain": {"type": "array", "items": _VOLUME_SCHEMA},
                               "luns": {"type": "object",
                                        "additionalProperties": {"type": "string"}}}}),
    Route("DELETE", "/vms/{id}/devices/{alias}", "unplug_device", "Unplug a device by alias "
          "and wait until the guest released it (409 with pending=true if not in time).",
          query={"timeout": {"type": "number", "minimum": 0, "maximum": MAX_UNPLUG_TIMEOUT,
                             "default": DEFAULT_UNPLUG_TIMEOUT}}),
    Route("GET", "/events", "events", "VM status changes after sequence number 'after' "
          "(each: seq, vm_id, name, status, exit_reason, time), waiting up to 'timeout' s "
          "for the first (long poll). 'instance' changes when the agent restarts (numbering "
          "starts again); 'gap' says events the client asked for are no longer kept.",
          query={"after": {"type": "integer", "minimum": 0, "default": 0},
                 "timeout": {"type": "number", "minimum": 0, "maximum": MAX_EVENTS_TIMEOUT,
                             "default": 0}}),
    Route("POST", "/vms/{id}/migrate", "migrate_vm", "Live-migrate a running VM, peer to "
          "peer, to the libvirt daemon at destination_uri (prepared there with mode=incoming, "
          "whose answer gives paths). Returns at once; the migration runs in the agent.",
          body={"type": "object", "required": ["destination_uri"], "additionalProperties": False,
                "properties": {"destination_uri": {"type": "string"},
                               "paths": {"type": "object",
                                         "additionalProperties": {"type": "string"}},
                               "policy": {"type": "string", "enum": list(MIGRATION_POLICIES),
                                          "default": "minimal_downtime"},
                               "bandwidth_mibps": {"type": "integer", "minimum": 1},
                               "tls": {"type": "boolean", "default": False,
                                       "description": "QEMU's migration stream over TLS "
                                       "too (VIR_MIGRATE_TLS); pair with a qemu+tls "
                                       "destination_uri"}}}),
    Route("GET", "/vms/{id}/migration", "migration_status", "The VM's migration on this "
          "host: progress (data processed and remaining, iteration, downtime limit), then "
          "the result with the final downtime."),
    Route("POST", "/vms/{id}/migration/cancel", "cancel_migration", "Source: abort the "
          "migration (the VM keeps running here). Destination: destroy the incoming copy "
          "that never resumed (409 if it already runs here)."),
    Route("POST", "/vms/{id}/snapshots", "create_snapshot", "Live snapshot of a VM running "
          "here (Up or Paused; 409 otherwise): each disk's new top, a qcow2 overlay on its "
          "current top (409 'chain changed' when the live top is another; 409 if the volume "
          "exists), made here, then one atomic external snapshot onto them with no libvirt "
          "snapshot metadata. Disk-only and quiesced through the guest agent when it answers "
          "(else unquiesced: quiesced=false), or with memory_volume the guest's memory saved "
          "there (the VM paused meanwhile; never quiesced). Then the live domain's metadata is "
          "the given <kestrel:vm> (the new chain). Disks not named (cdroms, LUNs) are not "
          "snapshotted. On failure the overlays and memory file are removed, the VM stays on "
          "its old chain and the error gives libvirt's reason and the storage domain. "
          "Answers {quiesced, memory, disks: [{alias, volume: the new top's id}]}.",
          body={"type": "object", "required": ["snapshot", "disks", "metadata"],
                "additionalProperties": False,
                "properties": {"snapshot": {"type": "string", "format": "uuid"},
                               "disks": {"type": "array", "minItems": 1, "items": {
                                   "type": "object", "required": ["alias", "volume", "parent"],
                                   "additionalProperties": False,
                                   "properties": {"alias": {"type": "string"},
                                                  "volume": _SNAPSHOT_VOLUME,
                                                  "parent": _SNAPSHOT_VOLUME}}},
                               "memory_volume": {**_SOURCE_VOLUME, "nullable": True},
                               "quiesce": {"type": "boolean", "default": False},
                               "metadata": {"type": "string", "description": "the "
                                            "<kestrel:vm> element for the new chain"}}}),
    Route("GET", "/vms/{id}/chains", "vm_chains", "Each disk's live chain from the live XML, "
          "top first as '<image>/<volume>' (a file off the storage domains as its path), with "
          "its block job: {disks: [{alias, target, chain, block_job: null | {type: commit|"
          "active_commit|pull|copy|backup, cur, end, ready}]}."),
    Route("POST", "/volumes/overlay", "create_overlay", "Create a qcow2 volume over parent "
          "(a stopped VM's snapshot or revert): its backing named relative, the parent's "
          "format pinned, the size of the parent or size_mib if larger. 409 if the volume "
          "exists or the parent is missing.",
          body={"type": "object", "required": ["volume", "parent"],
                "additionalProperties": False,
                "properties": {"volume": _SNAPSHOT_VOLUME, "parent": _SNAPSHOT_VOLUME}}),
    Route("POST", "/volumes/delete", "delete_volumes", "Delete volume files on storage "
          "domains; refused for a volume a VM on this host still uses.",
          body={"type": "object", "required": ["volumes"], "additionalProperties": False,
                "properties": {"volumes": {"type": "array", "items": _VOLUME_SCHEMA}}}),
    Route("POST", "/vms/{id}/merges", "start_merge", "Live merge (deleting a snapshot of "
          "a running VM): block commit of volume top into its backing volume base on the "
          "disk with this alias, RELATIVE (the volume above top is rebased onto base by "
          "relative name); top_is_active: an active commit that pivots the disk onto base. "
          "A commit already running on that disk (the agent restarted) is adopted. Ends by "
          "setting the domain metadata to the <kestrel:vm> element given. Answers {job}; "
          "result {chain: [files, top first], adopted}. top's file is "
          "left for the engine to delete.",
          body={"type": "object", "required": ["alias", "base", "top", "metadata"],
                "additionalProperties": False,
                "properties": {"alias": {"type": "string"}, "base": _SOURCE_VOLUME,
                               "top": _SOURCE_VOLUME, "top_is_active": {"type": "boolean",
                                                                        "default": False},
                               "bandwidth_mibps": {"type": "integer", "minimum": 0,
                                                   "default": 0,
                                                   "description": "0: no limit"},
                               "metadata": {"type": "string"}}}),
    Route("POST", "/volumes/merge", "merge_volumes", "Offline merge (a stopped VM): qemu-img "
          "commit of top into base through exactly the chain given (nothing probed), then "
          "qemu-img rebase -u of child onto base by relative name. Deletes nothing; safe to "
          "run again after a crash (a top already gone counts as merged when child is on "
          "base). Answers {job}; result {committed, child_backing}.",
          body={"type": "object", "required": ["base", "top"], "additionalProperties": False,
                "properties": {"base": _SOURCE_VOLUME, "top": _SOURCE_VOLUME,
                               "child": {"oneOf": [_SOURCE_VOLUME, {"type": "null"}]},
                               "chain": {"type": "array", "items": _SOURCE_VOLUME,
                                         "description": "the volumes below base, nearest "
                                         "first"}}}),
    Route("POST", "/volumes/resize", "resize_volume", "Grow a volume to size_mib (never "
          "shrink): blockResize when a running VM here uses it, else qemu-img resize; a "
          "missing volume is left for the next start to create.",
          body={"type": "object", "required": ["volume"], "additionalProperties": False,
                "properties": {"volume": _VOLUME_SCHEMA}}),
    Route("POST", "/volumes/seal", "seal_volume", "Seal a template volume: virt-sysprep "
          "(no network, format pinned) removes machine-id, SSH host keys, logs, shell "
          "history, DHCP leases and MAC-bound network config, and sets hostname when given. "
          "Refused for a volume a VM on this host uses, or a qcow2 with a backing or data "
          "file. A job (GET /jobs/{job}); minutes when the appliance boots without KVM.",
          body={"type": "object", "required": ["volume"], "additionalProperties": False,
                "properties": {"volume": _VOLUME_SCHEMA,
                               "hostname": {"type": "string", "default": ""}}}),
    Route("POST", "/storage/connect", "connect_storage", "Connect an NFS storage domain: "
          "mount export at path (mount -t nfs, creating the directory) unless mountinfo "
          "shows it mounted there already, then serve the domain's volumes (registered "
          "until the agent restarts). 409 if something else is mounted there; MountFailed "
          "(502) with mount's stderr, and nothing registered, if the mount fails.",
          body={"type": "object", "required": ["name", "export", "path"],
                "additionalProperties": False,
                "properties": {"name": {"type": "string"},
                               "type": {"type": "string", "enum": ["nfs"]},
                               "export": {"type": "string",
                                          "description": "server:/path"},
                               "options": {"type": "string",
                                           "description": "mount -o options, comma-"
                                           "separated, e.g. vers=4.2,soft"},
                               "path": {"type": "string",
                                        "description": "the mount point"}}}),
    Route("POST", "/storage/disconnect", "disconnect_storage", "Disconnect a storage "
          "domain connected with /storage/connect: unmount it and stop serving it; 409 "
          "while a VM on this host has a disk on it; a domain not connected is no change.",
          body={"type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {"name": {"type": "string"}}}),
    Route("GET", "/jobs/{job}", "job_status", "A job (image upload, import, export, volume "
          "copy): {id, kind, status: running|succeeded|failed|aborted, phase, progress "
          "0..100, done_bytes, total_bytes, result, error: {code, message, details}}. "
          "With 'wait', a running job is answered when it ends or after that many seconds "
          "(long poll). Finished jobs are kept at least an hour (or while among the last "
          "200).",
          query={"wait": {"type": "number", "minimum": 0, "maximum": MAX_JOB_WAIT,
                          "default": 0}}),
    Route("DELETE", "/jobs/{job}", "delete_job", "Abort a running job and wait (up to 60 s) "
          "until it cleaned up (its staging and half-made files removed), or forget a "
          "finished one (an export's staging file is removed then)."),
    Route("POST", "/images/uploads", "start_upload", "Upload step 1: check the domain, the "
          "target volume absent and not busy (409 naming it), free space >= length + 16 MiB, "
          "and make a 0600 staging file next to the target. Then PUT the bytes to "
          "/images/uploads/{job} and POST /images/uploads/{job}/commit. " + _JOB_NOTE,
          body={"type": "object", "required": ["volume", "length"],
                "additionalProperties": False,
                "properties": {"volume": _IMAGE_VOLUME, "image_format": _IMAGE_FORMAT,
                               "length": {"type": "integer", "minimum": 1},
                               "content_type": _CONTENT_TYPE}}),
    Route("PUT", "/images/uploads/{job}", "receive_upload", "Upload step 2: the image's raw "
          "bytes (application/octet-stream, Content-Length = the announced length, no "
          "chunked encoding), written to the staging file 1 MiB at a time; answers "
          "{received, sha256}. A body that ends short fails the job (staging removed).",
          stream="in"),
    Route("POST", "/images/uploads/{job}/commit", "commit_upload", "Upload step 3: the "
          "client's sha256 of the bytes it sent; a mismatch fails the job (400, field "
          "sha256). Then the job checks the image in the background (qemu-img info/check "
          "under limits: no backing file, no data file, vmdk extents in the file, the "
          "declared format true, no corruption), links it into place when it is already "
          "the volume's format or converts it (phase converting), and grows it to size_mib. "
          "Result {size_mib, format, detected_format, sha256, actual_size}.",
          body={"type": "object", "required": ["sha256"], "additionalProperties": False,
                "properties": {"sha256": {"type": "string"}}}),
    Route("POST", "/images/imports", "start_import", "Download an image from an http(s) URL "
          "into a new volume (redirects followed; addresses that are loopback, link-local, "
          "multicast or unspecified refused, after redirects too; timeout_s bounds connecting "
          "and each read), check sha256 when given, then as an upload's commit. " + _JOB_NOTE,
          body={"type": "object", "required": ["volume", "url"],
                "additionalProperties": False,
                "properties": {"volume": _IMAGE_VOLUME, "image_format": _IMAGE_FORMAT,
                               "url": {"type": "string"},
                               "sha256": {"type": "string", "default": ""},
                               "content_type": _CONTENT_TYPE,
                               "timeout_s": {"type": "number", "default": 30}}}),
    Route("POST", "/images/exports", "start_export", "Convert a volume (flattened through "
          "chain) to format into a 0600 staging file on its domain and hash it; result "
          "{length, sha256, format}; then GET /images/exports/{job} and DELETE /jobs/{job}. "
          + _JOB_NOTE,
          body={"type": "object", "required": ["volume"], "additionalProperties": False,
                "properties": {"volume": _SOURCE_VOLUME, "chain": _CHAIN,
                               "format": _FORMAT}}),
    Route("GET", "/images/exports/{job}", "read_export", "The finished export's bytes "
          "(application/octet-stream, Content-Length = result.length), 1 MiB at a time.",
          stream="out"),
    Route("POST", "/volumes/copy", "copy_volume", "Copy a volume (flattened through chain) "
          "into a new target volume, linked into place when complete, grown to size_mib; "
          "result {size_mib, format, actual_size}. " + _JOB_NOTE,
          body={"type": "object", "required": ["source", "target"],
                "additionalProperties": False,
                "properties": {"source": _SOURCE_VOLUME, "chain": _CHAIN,
                               "target": _IMAGE_VOLUME}}),
    Route("POST", "/vms/{id}/backups", "start_backup", "Push backup of a running VM: "
          "redefine the given checkpoints libvirt lacks (oldest first), create each "
          "target qcow2 on its storage domain (incremental: backed by parent_volume, named "
          "relative), then libvirt's backup job with the new checkpoint; once it ended, "
          "every older checkpoint is deleted with its bitmap. A job; result "
          "{checkpoint_xml, disks: [{alias, bytes (the file's allocation), size_mib}], "
          "fell_back: '' or why a full was taken instead of the incremental, pruned: the "
          "checkpoints deleted, copy_ms: how long libvirt's backup job took}. A failed job "
          "leaves no target file and no new checkpoint.",
          body={"type": "object", "required": ["backup", "checkpoint", "disks"],
                "additionalProperties": False,
                "properties": {"backup": {"type": "string", "format": "uuid"},
                               "checkpoint": {"type": "string"},
                               "incremental": {"type": "string", "default": "",
                                               "description": "the checkpoint of the "
                                               "previous backup; '' for a full backup"},
                               "checkpoints": {"type": "array", "items": {
                                   "type": "object", "required": ["id", "xml"],
                                   "properties": {"id": {"type": "string"},
                                                  "xml": {"type": "string"}}}},
                               "disks": {"type": "array", "items": {
                                   "type": "object",
                                   "required": ["alias", "target", "target_volume"],
                                   "properties": {
                                       "alias": {"type": "string"},
                                       "target": {"type": "string"},
                                       "target_volume": _IMAGE_VOLUME,
                                       "parent_volume": {**_IMAGE_VOLUME,
                                                         "nullable": True}}}}}}),
    Route("GET", "/vms/{id}/checkpoints", "list_checkpoints", "The checkpoints libvirt has "
          "for the VM here, parents first: {checkpoints: [id, ...]}. A transient domain "
          "loses them when it stops; a backup redefines them."),
    Route("DELETE", "/vms/{id}/checkpoints/{checkpoint}", "delete_checkpoint", "Delete a "
          "checkpoint of the VM here; libvirt merges its dirty bitmap into its parent's."),
    Route("PUT", "/pki/crl", "install_crl", "Install the engine CA's certificate revocation "
          "list (PEM): the agent checks its peers against it from the next connection; "
          "libvirt's and QEMU's copies are written where libvirt TLS uses the engine CA, "
          "and libvirtd reloads them. A list the CA did not sign is refused (400).",
          body={"type": "object", "required": ["crl"], "additionalProperties": False,
                "properties": {"crl": {"type": "string"}}}),
)


class Api:
    """Routes requests to the hypervisor; built lazily so the API answers without libvirt."""

    def __init__(self, config: AgentConfig,
                 hypervisor_factory: Callable[[AgentConfig], Any] | None = None):
        self.config = config
        self._factory = hypervisor_factory
        self._hypervisor = None
        # Shares config.storage_domains with the hypervisor: what it connects resolves.
        # (Some tests build an Api without a config; they never reach storage.)
        self.storage = StorageConnections(config.storage_domains if config else {})
        self.jobs = Jobs()
        self.images = Images(config, self.jobs)

    @property
    def hypervisor(self):
        if self._hypervisor is None:
            if self._factory is None:
                from engine_lib.agent.vms import Hypervisor  # late: the API works without libvirt
                self._factory = Hypervisor
            self._hypervisor = self._factory(self.config)
        return self._hypervisor

    def start(self) -> None:
        """Connect to libvirt now, which rebuilds the VM registry (recovery start).

        If libvirt is not reachable yet the agent still serves; the first
        request that needs libvirt connects (and recovers) then.
        """
        try:
            self.hypervisor.connection()
        except KestrelError as exc:
            log.warning("libvirt not reachable at start (%s); will retry on demand",
                        exc.message)
        self.hypervisor.ballooning.start()  # each round reconnects if it must

    def close(self) -> None:
        self.jobs.abort_all()  # staging files and half volumes are not left behind
        if self._hypervisor is not None:
            self._hypervisor.close()

    def stream_kind(self, method: str, path: str) -> str:
        """"in"/"out" for a route whose body/answer is streamed bytes, else ""."""
        try:
            return self._route(method, path)[0].stream
        except KestrelError:
            return ""

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               body: bytes, stream: Any = None, length: int = 0
               ) -> tuple[int, dict | Download]:
        try:
            route, params = self._route(method, path)
            request = Request(params=params, query=query,
                              body={} if route.stream == "in" else _json_body(body, route),
                              stream=stream, length=length)
            return 200, getattr(self, route.operation)(request)
        except KestrelError as exc:
            if exc.http_status >= 500:
                log.warning("%s %s failed: %s", method, path, exc.message)
            return exc.http_status, {"error": exc.to_dict()}
        except Exception as exc:
            log.exception("%s %s: internal error", method, path)
            error = KestrelError(f"internal agent error: {type(exc).__name__}: {exc}")
            return 500, {"error": error.to_dict()}

    def _route(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed = []
        for route in ROUTES:
            match = route.regex.match(path)
            if match:
                if route.method == method:
                    return route, match.groupdict()
                allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(method, path, allowed)
        raise NotFound("API path", path)

    # -- operations ------------------------------------------------------------------

    def openapi(self, _request: Request) -> dict:
        return openapi_document()

    def host_info(self, _request: Request) -> dict:
        info = self.hypervisor.host_info()
        # Domains whose connect failed are facts too: unavailable, with mount's reason.
        failed = self.storage.failures()
        if failed and isinstance(info.get("storage_domains"), list):
            info["storage_domains"] = info["storage_domains"] + failed
        return info

    def list_vms(self, _request: Request) -> dict:
        return {"vms": self.hypervisor.list_vms()}

    def start_vm(self, request: Request) -> dict:
        xml = request.body.get("xml")
        if not isinstance(xml, str) or not xml.strip():
            raise InvalidSpec("xml", "a non-empty string with the domain XML is required")
        mode = request.body.get("mode", "fresh")
        if not isinstance(mode, str):
            raise InvalidSpec("mode", "must be a string")
        if mode == "restore":
            if "memory_volume" not in request.body:
                raise InvalidSpec("memory_volume", "mode 'restore' needs the memory volume "
                                                   "{domain, image, volume} to restore from")
            location = _volume_location(request.body["memory_volume"], "memory_volume")
            keep = request.body.get("keep_memory", False)
            if not isinstance(keep, bool):
                raise InvalidSpec("keep_memory", f"must be true or false, got {keep!r}")
            return self.hypervisor.restore(xml, location, keep_memory=keep)
        if "keep_memory" in request.body:
            raise InvalidSpec("keep_memory", f"only mode 'restore' keeps a memory volume "
                                             f"(mode is '{mode}')")
        if "memory_volume" in request.body:
            raise InvalidSpec("memory_volume", f"only mode 'restore' takes a memory volume "
                                               f"(mode is '{mode}')")
        return self.hypervisor.start(xml, mode)

    def hibernate_vm(self, request: Request) -> dict:
        vm_id = _vm_id(request)
        location = _volume_location(request.body.get("memory_volume"), "memory_volume")
        return self.hypervisor.hibernate(vm_id, location)

    def reboot_vm(self, request: Request) -> dict:
        return self.hypervisor.reboot(_vm_id(request))

    def vm_status(self, request: Request) -> dict:
        return self.hypervisor.status(_vm_id(request))

    def vm_xml(self, request: Request) -> dict:
        return self.hypervisor.xml(_vm_id(request))

    def shutdown_vm(self, request: Request) -> dict:
        timeout = request.body.get("timeout", DEFAULT_SHUTDOWN_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 <= timeout <= MAX_SHUTDOWN_TIMEOUT:
            raise InvalidSpec("timeout", f"must be a number of seconds from 0 to "
                                         f"{MAX_SHUTDOWN_TIMEOUT:g}, got {timeout!r}")
        return self.hypervisor.shutdown(_vm_id(request), float(timeout))

    def destroy_vm(self, request: Request) -> dict:
        return self.hypervisor.destroy(_vm_id(request))

    def pause_vm(self, request: Request) -> dict:
        return self.hypervisor.pause(_vm_id(request))

    def resume_vm(self, request: Request) -> dict:
        return self.hypervisor.resume(_vm_id(request))

    def remove_vm(self, request: Request) -> dict:
        return self.hypervisor.remove(_vm_id(request))

    def console_log(self, request: Request) -> dict:
        values = request.query.get("bytes", [str(DEFAULT_CONSOLE_BYTES)])
        text = values[-1]
        if not text.isdigit() or not 0 < int(text) <= MAX_CONSOLE_BYTES:
            raise InvalidSpec("bytes", f"must be an integer from 1 to {MAX_CONSOLE_BYTES}, "
                                       f"got '{text}'")
        return self.hypervisor.console_log(_vm_id(request), int(text))

    def guest_info(self, request: Request) -> dict:
        return self.hypervisor.guest_info(_vm_id(request))

    def guests_info(self, _request: Request) -> dict:
        return self.hypervisor.guests_info()

    def stats(self, _request: Request) -> dict:
        return self.hypervisor.stats()

    def vm_stats(self, request: Request) -> dict:
        return self.hypervisor.vm_stats(_vm_id(request))

    def plug_device(self, request: Request) -> dict:
        vm_id = _vm_id(request)
        xml = request.body.get("xml")
        if not isinstance(xml, str) or not xml.strip():
            raise InvalidSpec("xml", "a non-empty string with the device XML is required")
        volume = None
        item = request.body.get("volume")
        if item is not None:
            volume = _volume_ref(item, "volume")
        chain = request.body.get("chain") or []
        if not isinstance(chain, list) or (chain and volume is None):
            raise InvalidSpec("chain", "must be a list of the volume's backing volumes")
        refs = [_volume_ref(v, f"chain[{i}]", backing=True) for i, v in enumerate(chain)]
        luns = request.body.get("luns") or {}
        if not isinstance(luns, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in luns.items()):
            raise InvalidSpec("luns", "must map registered LUN names to device paths")
        return self.hypervisor.plug_device(vm_id, xml, volume, luns, refs)

    def unplug_device(self, request: Request) -> dict:
        vm_id = _vm_id(request)
        timeout = _seconds(request, "timeout", DEFAULT_UNPLUG_TIMEOUT, MAX_UNPLUG_TIMEOUT)
        alias = request.params["alias"]
        if not alias.startswith("ua-"):
            raise InvalidSpec("alias", f"'{alias}' is not a device alias (ua-...)")
        return self.hypervisor.unplug_device(vm_id, alias, timeout)

    def events(self, request: Request) -> dict:
        after = request.query.get("after", ["0"])[-1]
        if not after.isdigit():
            raise InvalidSpec("after", f"must be a sequence number (an integer >= 0), "
                                       f"got '{after}'")
        timeout = _seconds(request, "timeout", 0, MAX_EVENTS_TIMEOUT)
        return self.hypervisor.events_after(int(after), timeout)

    def migrate_vm(self, request: Request) -> dict:
        vm_id = _vm_id(request)
        uri = request.body.get("destination_uri")
        if not isinstance(uri, str) or "://" not in uri:
            raise InvalidSpec("destination_uri", f"a libvirt URI is required "
                                                 f"(e.g. qemu+tls://host/system), got {uri!r}")
        paths = request.body.get("paths", {})
        if not isinstance(paths, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in paths.items()):
            raise InvalidSpec("paths", "must map placeholders to the destination's paths")
        policy = request.body.get("policy", "minimal_downtime")
        if policy not in MIGRATION_POLICIES:
            raise InvalidSpec("policy", f"must be one of {', '.join(MIGRATION_POLICIES)}, "
                                        f"got {policy!r}")
        bandwidth = request.body.get("bandwidth_mibps")
        if bandwidth is not None and (isinstance(bandwidth, bool)
                                      or not isinstance(bandwidth, int) or bandwidth < 1):
            raise InvalidSpec("bandwidth_mibps", f"a positive integer (MiB/s) is required, "
                                                 f"got {bandwidth!r}")
        tls = request.body.get("tls", False)
        if not isinstance(tls, bool):
            raise InvalidSpec("tls", f"must be true or false, got {tls!r}")
        return self.hypervisor.migrations.start_outgoing(vm_id, uri, paths, policy, bandwidth,
                                                         tls=tls)

    def migration_status(self, request: Request) -> dict:
        return self.hypervisor.migrations.report(_vm_id(request))

    def cancel_migration(self, request: Request) -> dict:
        return self.hypervisor.migrations.cancel(_vm_id(request))

    def create_snapshot(self, request: Request) -> dict:
        vm_id = _vm_id(request)
        return self.hypervisor.create_snapshot(vm_id, snapshot_request.parse(request.body))

    def vm_chains(self, request: Request) -> dict:
        return self.hypervisor.chains(_vm_id(request))

    def create_overlay(self, request: Request) -> dict:
        body = request.body
        overlay = snapshot_request.new_top(body.get("volume"), body.get("parent"))
        return self.hypervisor.create_overlay(overlay)

    def delete_volumes(self, request: Request) -> dict:
        items = request.body.get("volumes")
        if not isinstance(items, list):
            raise InvalidSpec("volumes", "a list of {domain, image, volume} objects is required")
        locations = []
        for index, item in enumerate(items):
            _checked_volume(item, f"volumes[{index}]")
            locations.append(VolumeLocation(item["domain"], item["image"], item["volume"]))
        return {"volumes": self.hypervisor.delete_volumes(locations)}

    def resize_volume(self, request: Request) -> dict:
        item = request.body.get("volume")
        size = _checked_volume(item, "volume", sized=True)
        location = VolumeLocation(item["domain"], item["image"], item["volume"])
        return self.hypervisor.resize_volume(location, str(item.get("format", "qcow2")), size)

    def seal_volume(self, request: Request) -> dict:
        item = request.body.get("volume")
        location = _volume_location(item, "volume")
        fmt = item.get("format", "qcow2")
        hostname = request.body.get("hostname", "")
        seal.check_format(fmt)
        seal.check_hostname(hostname)
        in_use = self.hypervisor.disks_in_use()
        # A job like a copy: the volume is busy for other jobs until it ends, and
        # DELETE /jobs/{id} kills virt-sysprep and its appliance.
        job = self.jobs.create("seal", f"{location.domain}/{location.image}/{location.volume}")
        job.phase = "sealing"
        self.jobs.run(job, lambda j: seal.seal(location, self.config.storage_domains, fmt,
                                               self.config.seal, hostname=hostname,
                                               in_use=in_use, abort=j.abort))
        return {"job": job.id}

    def connect_storage(self, request: Request) -> dict:
        return self.storage.connect(request.body)

    def disconnect_storage(self, request: Request) -> dict:
        # Defined domains count as users too: their next start would need the disk.
        return self.storage.disconnect(request.body.get("name"),
                                       lambda: self.hypervisor.disks_in_use())

    def job_status(self, request: Request) -> dict:
        wait = _seconds(request, "wait", 0, MAX_JOB_WAIT)
        job = self.jobs.get(request.params["job"])
        if wait:
            job.finished.wait(wait)
        return job.to_dict()

    def delete_job(self, request: Request) -> dict:
        return self.jobs.delete(request.params["job"])

    def start_upload(self, request: Request) -> dict:
        return self.images.start_upload(request.body)

    def receive_upload(self, request: Request) -> dict:
        return self.images.receive(request.params["job"], request.stream, request.length)

    def commit_upload(self, request: Request) -> dict:
        return self.images.commit(request.params["job"], request.body)

    def start_import(self, request: Request) -> dict:
        return self.images.start_import(request.body)

    def start_export(self, request: Request) -> dict:
        return self.images.start_export(request.body)

    def read_export(self, request: Request) -> Download:
        return self.images.export_file(request.params["job"])

    def copy_volume(self, request: Request) -> dict:
        return self.images.copy(request.body)

    def start_merge(self, request: Request) -> dict:
        return merges.start_live(self.hypervisor, self.jobs, _vm_id(request), request.body)

    def merge_volumes(self, request: Request) -> dict:
        return merges.start_offline(self.jobs, self.config.storage_domains,
                                    self.hypervisor.disks_in_use(), request.body)

    def start_backup(self, request: Request) -> dict:
        vm_id = _vm_id(request)
        backup = backup_request.parse(request.body)
        return self.hypervisor.backup(self.jobs, vm_id, backup)

    def list_checkpoints(self, request: Request) -> dict:
        return self.hypervisor.checkpoints(_vm_id(request))

    def delete_checkpoint(self, request: Request) -> dict:
        vm_id = _vm_id(request)
        name = backup_request.checkpoint_name(request.params["checkpoint"], "checkpoint")
        return self.hypervisor.delete_checkpoint(vm_id, name)

    def install_crl(self, request: Request) -> dict:
        pem = request.body.get("crl")
        if not isinstance(pem, str):
            raise InvalidSpec("crl", "a PEM certificate revocation list is required")
        return crl.install(self.config, pem.encode())


def _seconds(request: Request, name: str, default: float, maximum: float) -> float:
    """Query parameter ``name``: a number of seconds from 0 to ``maximum``."""
    text = request.query.get(name, [str(default)])[-1]
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= maximum:
        raise InvalidSpec(name, f"must be a number of seconds from 0 to {maximum:g}, "
                                f"got '{text}'")
    return value


class MethodNotAllowed(KestrelError):
    code = "MethodNotAllowed"
    http_status = 405

    def __init__(self, method: str, path: str, allowed: list[str]):
        super().__init__(f"{method} is not allowed on {path} (allowed: {', '.join(allowed)})",
                         method=method, path=path, allowed=allowed)


def _volume_location(item, where: str):
    """A {domain, image, volume} object as a VolumeLocation; InvalidSpec naming the field."""
    _checked_volume(item, where)
    return VolumeLocation(item["domain"], item["image"], item["volume"])


def _volume_ref(item: Any, field: str, backing: bool = False) -> VolumeRef:
    """A hotplugged disk's volume, or (``backing``) one of the volumes under it: a chain
    member is never created and carries no device alias."""
    size = _checked_volume(item, field, sized=not backing)
    return VolumeRef(alias="" if backing else str(item.get("alias", "")),
                     domain=item["domain"], image=item["image"], volume=item["volume"],
                     format=str(item.get("format", "qcow2")),
                     size_mib=size if size is not None else 0, disk=str(item.get("disk", "")),
                     create=not backing and item.get("create") is True,
                     parent=str(item.get("parent", "")),
                     parent_format=str(item.get("parent_format", "")))


def _checked_volume(item, where: str, sized: bool = False) -> int | None:
    """Validate a {domain, image, volume[, size_mib, ...]} object; its size when ``sized``."""
    if not isinstance(item, dict):
        raise InvalidSpec(where, "must be an object")
    unknown = set(item) - _VOLUME_KEYS
    if unknown:
        raise InvalidSpec(where, f"unknown keys {sorted(unknown)}")
    for key in ("domain", "image", "volume"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise InvalidSpec(f"{where}.{key}", "a non-empty string is required")
    if not sized:
        return None
    size = item.get("size_mib")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InvalidSpec(f"{where}.size_mib", f"a positive integer is required, got {size!r}")
    return size


def _vm_id(request: Request) -> str:
    text = request.params["id"]
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidSpec("vm_id", f"'{text}' is not a VM id (a UUID)") from None


def _json_body(body: bytes, route: Route) -> dict:
    if not body.strip():
        if route.body and route.body.get("required"):
            raise InvalidSpec("body", f"a JSON object with {route.body['required']} is required")
        return {}
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSpec("body", f"not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidSpec("body", f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    _check_depth(data)
    if not isinstance(data, dict):
        raise InvalidSpec("body", f"must be a JSON object, got {type(data).__name__}")
    unknown = set(data) - set((route.body or {}).get("properties", {}))
    if unknown:
        takes = "takes no fields" if route.body is None else "does not know"
        raise InvalidSpec("body", f"{route.method} {API_PREFIX}{route.path} {takes} "
                                  f"{sorted(unknown)}")
    return data


def _check_depth(data: Any) -> None:
    """No request needs deep nesting; refusing it here keeps every later walk shallow.
    (Iterative, and bounded by the body size limit.)"""
    stack = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidSpec("body", f"nested more than {MAX_JSON_DEPTH} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def openapi_document() -> dict:
    """OpenAPI 3.0 description of ROUTES."""
    error = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, dict] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {
            "operationId": route.operation,
            "summary": route.summary,
            "responses": {
                "200": {"description": "Success",
                        "content": {"application/json": {"schema": {"type": "object"}}}},
                "default": {"description": "Error (status per error code)",
                            "content": {"application/json": {"schema": error}}},
            },
        }
        parameters = []
        if "{id}" in route.path:
            parameters.append({"name": "id", "in": "path", "required": True,
                               "description": "VM id (= domain UUID)",
                               "schema": {"type": "string", "format": "uuid"}})
        if "{job}" in route.path:
            parameters.append({"name": "job", "in": "path", "required": True,
                               "description": "Job id (from the call that started it)",
                               "schema": {"type": "string"}})
        if "{checkpoint}" in route.path:
            parameters.append({"name": "checkpoint", "in": "path", "required": True,
                               "description": "Checkpoint id", "schema": {"type": "string"}})
        if "{alias}" in route.path:
            parameters.append({"name": "alias", "in": "path", "required": True,
                               "description": "Device alias (ua-...)",
                               "schema": {"type": "string"}})
        for name, schema in route.query.items():
            parameters.append({"name": name, "in": "query", "required": False,
                               "schema": schema})
        if parameters:
            operation["parameters"] = parameters
        if route.stream == "in":
            operation["requestBody"] = {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}}
        if route.stream == "out":
            operation["responses"]["200"] = {"description": "The bytes", "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}}
        if route.body:
            operation["requestBody"] = {
                "required": bool(route.body.get("required")),
                "content": {"application/json": {"schema": route.body}}}
        paths.setdefault(API_PREFIX + route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "kestrel host agent", "version": engine_lib.__version__,
                 "description": "HTTPS with mutual TLS: clients need a certificate "
                                "signed by the engine CA."},
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "details": {"type": "object"}}}}}}},
    }
