"""The engine's client for host agents: HTTPS + mutual TLS, JSON in and out.

Errors come back typed, so callers never parse messages:
- agent not reachable (refused, timeout, DNS, reset) -> AgentUnreachable
  naming host:port and the cause;
- agent's certificate not signed by the engine CA, or not issued for the
  address we dialled -> CertificateError saying which; the agent refusing the
  engine's own certificate is a CertificateError as well;
- an error document from the agent -> the same class (ERRORS_BY_CODE) with
  the agent's message and details, plus ``details["agent"]``.

``AgentApi`` is what the engine asks of an agent: AgentClient implements it over
the wire, and the unit tests' in-process stand-ins declare it, so that a change
here shows up in them (tests/lib/test_agent_api.py compares the signatures).

Standard library only: the engine may run where only the stdlib is certain.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

from engine_lib.protocol.errors import (
    ERRORS_BY_CODE,
    AgentError,
    AgentUnreachable,
    CertificateError,
    KestrelError,
)
from engine_lib.protocol.storage import MOUNT_TIMEOUT_S
from engine_lib.protocol.wire import API_PREFIX

# A shutdown request waits for the guest on the agent; give the answer this much extra time.
SHUTDOWN_GRACE = 15.0
# Saving or restoring a guest's memory takes as long as writing or reading it.
HIBERNATE_TIMEOUT = 600.0
# Connecting storage waits for mount: give the agent's own limit some slack.
STORAGE_CONNECT_TIMEOUT = MOUNT_TIMEOUT_S + 15.0
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

    def start_vm(self, xml: str, mode: str = "fresh") -> dict:
        raise _not_modelled(self, "start_vm")

    def restore_vm(self, xml: str, memory_volume: dict) -> dict:
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

    def plug_device(self, vm_id: str, xml: str, volume: dict | None = None) -> dict:
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


class AgentClient:
    """One host agent, over HTTPS (implements AgentApi and a few calls beyond it).

    Thread-safe: every request uses its own connection.
    """

    def __init__(self, address: str, port: int, pki_dir: str, timeout: float = 30):
        self.address = address
        self.port = port
        self.timeout = timeout
        self.endpoint = f"{address}:{port}"
        self._context = client_context(pki_dir)

    # -- API ---------------------------------------------------------------------

    def host_info(self, timeout: float | None = None) -> dict:
        return self._call("GET", "/host", timeout=timeout)

    def list_vms(self) -> list[dict]:
        return self._call("GET", "/vms")["vms"]

    def start_vm(self, xml: str, mode: str = "fresh") -> dict:
        return self._call("POST", "/vms", {"xml": xml, "mode": mode})

    def restore_vm(self, xml: str, memory_volume: dict) -> dict:
        """Start mode "restore": the hibernated VM continues from its memory volume."""
        return self._call("POST", "/vms", {"xml": xml, "mode": "restore",
                                           "memory_volume": memory_volume},
                          timeout=max(self.timeout, HIBERNATE_TIMEOUT))

    def hibernate_vm(self, vm_id: str, memory_volume: dict) -> dict:
        """Save the VM's memory to ``memory_volume`` ({domain, image, volume}); Down after."""
        return self._call("POST", f"/vms/{_seg(vm_id)}/hibernate",
                          {"memory_volume": memory_volume},
                          timeout=max(self.timeout, HIBERNATE_TIMEOUT))

    def reboot_vm(self, vm_id: str) -> dict:
        return self._call("POST", f"/vms/{_seg(vm_id)}/reboot")

    def vm_status(self, vm_id: str) -> dict:
        return self._call("GET", f"/vms/{_seg(vm_id)}")

    def vm_xml(self, vm_id: str) -> str:
        return self._call("GET", f"/vms/{_seg(vm_id)}/xml")["xml"]

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
        return self._call("GET", f"/vms/{_seg(vm_id)}/console?bytes={int(nbytes)}")["data"]

    def stats(self) -> dict:
        """Host counters and every running VM's: {"host": {...}, "vms": [...]}."""
        return self._call("GET", "/stats")

    def vm_stats(self, vm_id: str) -> dict:
        return self._call("GET", f"/vms/{_seg(vm_id)}/stats")

    def plug_device(self, vm_id: str, xml: str, volume: dict | None = None) -> dict:
        """Hotplug a <disk> or <interface>; returns the live device XML."""
        body: dict[str, Any] = {"xml": xml}
        if volume is not None:
            body["volume"] = volume
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
        return self._call("GET", f"/vms/{_seg(vm_id)}/migration")

    def cancel_migration(self, vm_id: str) -> dict:
        return self._call("POST", f"/vms/{_seg(vm_id)}/migration/cancel")

    def openapi(self) -> dict:
        return self._call("GET", "/openapi.json")

    def guest_info(self, vm_id: str) -> dict:
        """qemu-guest-agent's report; GuestAgentUnavailable when it does not answer."""
        return self._call("GET", f"/vms/{_seg(vm_id)}/guest")

    def guests_info(self) -> dict:
        """Every Up VM's guest-agent report: {"guests": {id: report}, "unavailable": {id: why}}."""
        return self._call("GET", "/guests")

    def events(self, after: int = 0, timeout: float = 0) -> dict:
        """VM status changes after ``after`` (long poll up to ``timeout`` s):
        {"instance", "seq", "gap", "events": [...]}."""
        return self._call("GET", f"/events?after={int(after)}&timeout={timeout:g}",
                          timeout=self.timeout + timeout)

    # -- transport ---------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict | None = None,
              timeout: float | None = None) -> Any:
        status, data = self._request(method, API_PREFIX + path, body, timeout or self.timeout)
        try:
            document = json.loads(data) if data else {}
        except ValueError:
            raise AgentError(f"agent {self.endpoint} answered {method} {path} with "
                             f"HTTP {status} and a body that is not JSON",
                             agent=self.endpoint, status=status) from None
        if status >= 400:
            raise self._error(status, document, method, path)
        return document

    def _request(self, method: str, path: str, body: dict | None,
                 timeout: float) -> tuple[int, bytes]:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPSConnection(self.address, self.port, timeout=timeout,
                                           context=self._context)
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
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
            raise AgentUnreachable(f"agent {self.endpoint} unreachable: no answer within "
                                   f"{timeout:g} s", agent=self.endpoint,
                                   cause="timeout") from None
        except (OSError, http.client.HTTPException) as exc:
            cause = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise AgentUnreachable(f"agent {self.endpoint} unreachable: {cause}",
                                   agent=self.endpoint, cause=cause) from None
        finally:
            conn.close()

    def _error(self, status: int, document: dict, method: str, path: str) -> KestrelError:
        error = document.get("error") if isinstance(document, dict) else None
        if not isinstance(error, dict) or "message" not in error:
            return AgentError(f"agent {self.endpoint} answered {method} {path} with HTTP "
                              f"{status}", agent=self.endpoint, status=status)
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
        return rebuild_error(error.get("code", ""), str(error["message"]),
                             {**details, "agent": self.endpoint})


def rebuild_error(code: str, message: str, details: dict) -> KestrelError:
    """The exception the agent raised, rebuilt from its wire form.

    Error classes take different constructor arguments, so the instance is made
    without calling the subclass constructor; the details are restored as
    attributes too (InvalidSpec's ``field``/``reason``). Unknown codes become
    AgentError with the code in the details.
    """
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        return AgentError(message, **{**details, "code": code})
    error = cls.__new__(cls)
    KestrelError.__init__(error, message, **details)
    for key, value in details.items():
        if not hasattr(error, key):
            setattr(error, key, value)
    return error


def _seg(value: str) -> str:
    return quote(str(value), safe="")
