"""Typed errors shared by the engine, the agent and the modules.

Every error carries what was asked and why it failed; only the outermost
boundary (an Ansible module, the CLI, the agent's HTTP layer) turns it into a
message. ``code`` is the stable name used on the wire between agent and engine.
"""

from __future__ import annotations

from typing import Any


class KestrelError(Exception):
    """Base of every error kestrel raises on purpose."""

    code = "KestrelError"
    http_status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidSpec(KestrelError):
    """A user-supplied spec is wrong; ``field`` names the offending key path."""

    code = "InvalidSpec"
    http_status = 400

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}", field=field, reason=reason)
        self.field = field
        self.reason = reason


class NotFound(KestrelError):
    code = "NotFound"
    http_status = 404

    def __init__(self, kind: str, name: str):
        super().__init__(f"{kind} '{name}' does not exist", kind=kind, name=name)


class VmNotFound(NotFound):
    code = "VmNotFound"

    def __init__(self, name: str):
        super().__init__("VM", name)


class HostNotFound(NotFound):
    code = "HostNotFound"

    def __init__(self, name: str):
        super().__init__("host", name)


class ClusterNotFound(NotFound):
    code = "ClusterNotFound"

    def __init__(self, name: str):
        super().__init__("cluster", name)


class Conflict(KestrelError):
    """The request contradicts the current state (e.g. removing a busy cluster)."""

    code = "Conflict"
    http_status = 409


class NoValidHost(KestrelError):
    """The scheduler found no host; ``explanation`` says why for each host."""

    code = "NoValidHost"
    http_status = 409

    def __init__(self, vm: str, explanation: dict[str, Any], note: str = "") -> None:
        """``note``: what the engine does about it (a host being powered on, say)."""
        reasons = "; ".join(
            f"{host}: {reason}" for host, reason in explanation.get("filtered", {}).items()
        ) or "the cluster has no hosts"
        super().__init__(f"no host can run VM '{vm}' ({reasons})" + (f"; {note}" if note else ""),
                         explanation=explanation)
        self.explanation = explanation


class AgentError(KestrelError):
    """The agent answered, but refused or failed the operation."""

    code = "AgentError"
    http_status = 502


class AgentUnreachable(AgentError):
    """The agent could not be reached at all (network, TLS, timeout)."""

    code = "AgentUnreachable"
    http_status = 503


class ReplyTooLarge(AgentError):
    """The agent's answer was larger than the engine reads for that call; it was cut
    there (``details["limit"]`` bytes), never held whole in memory."""

    code = "ReplyTooLarge"


class CertificateError(AgentUnreachable):
    """A TLS peer presented a certificate our CA did not sign (or none)."""

    code = "CertificateError"


class LibvirtError(KestrelError):
    """libvirt refused an operation on the host."""

    code = "LibvirtError"
    http_status = 500


class HookError(KestrelError):
    code = "HookError"
    http_status = 500


class PayloadError(KestrelError):
    """The cloud-init payload ISO could not be written on the host (tool missing or failing)."""

    code = "PayloadError"
    http_status = 500


class GuestAgentUnavailable(KestrelError):
    """The VM's qemu-guest-agent did not answer (not installed, not started, or busy)."""

    code = "GuestAgentUnavailable"
    http_status = 409


class MigrationFailed(KestrelError):
    """A live migration did not complete; raised only once the VM is known to run,
    as its one copy, on the source (``details["source"]``) and the database says so."""

    code = "MigrationFailed"
    http_status = 502


class Unauthenticated(KestrelError):
    """The engine API could not tell who is asking: no credentials, or a password,
    token or session that is wrong, expired or revoked (the reason is not told apart,
    so a caller learns nothing about which part was wrong)."""

    code = "Unauthenticated"
    http_status = 401


class PermissionDenied(KestrelError):
    """The user (or the token's narrower role) lacks ``permission`` on the object."""

    code = "PermissionDenied"
    http_status = 403

    def __init__(self, user: str, permission: str, object_type: str, object_name: str):
        where = "the system" if object_type == "system" else f"{object_type} '{object_name}'"
        super().__init__(f"user '{user}' lacks permission '{permission}' on {where}",
                         user=user, permission=permission, object_type=object_type,
                         object=object_name)
        self.permission = permission


class Cancelled(KestrelError):
    """A long operation stopped because its user cancelled it; what it had done so far
    was undone or is named in the message."""

    code = "Cancelled"
    http_status = 409


class TooManyAttempts(KestrelError):
    """Logins for this user or from this address failed too often: wait ``retry_after`` s."""

    code = "TooManyAttempts"
    http_status = 429

    def __init__(self, retry_after: int):
        super().__init__(f"too many failed logins; try again in {retry_after} s",
                         retry_after=retry_after)
        self.retry_after = retry_after


class RequestTooLarge(KestrelError):
    code = "RequestTooLarge"
    http_status = 413


class Busy(KestrelError):
    """The engine runs as many long operations as it allows; try again later."""

    code = "Busy"
    http_status = 503


class InternalError(KestrelError):
    """An error the engine did not expect; its details are in the engine's log only."""

    code = "InternalError"
    http_status = 500


ERRORS_BY_CODE = {
    cls.code: cls
    for cls in (
        KestrelError, InvalidSpec, NotFound, VmNotFound, HostNotFound, ClusterNotFound,
        Conflict, NoValidHost, AgentError, AgentUnreachable, ReplyTooLarge, CertificateError,
        LibvirtError, HookError,
        MigrationFailed, PayloadError, GuestAgentUnavailable, Unauthenticated, PermissionDenied,
        Cancelled, TooManyAttempts, RequestTooLarge, Busy, InternalError,
    )
}


def rebuild(code: str, message: str, details: dict[str, Any],
            unknown: type[KestrelError] = KestrelError) -> KestrelError:
    """The exception a peer raised, rebuilt from its wire form (``to_dict()``).

    Error classes take different constructor arguments, so the instance is made
    without calling the subclass constructor; the details are restored as
    attributes too (InvalidSpec's ``field``/``reason``). An unknown code becomes
    ``unknown`` with the code in the details.
    """
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        return unknown(message, **{**details, "code": code})
    error = cls.__new__(cls)
    KestrelError.__init__(error, message, **details)
    for key, value in details.items():
        if not hasattr(error, key):
            setattr(error, key, value)
    return error
