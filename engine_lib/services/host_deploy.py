"""Reinstalling a host: oVirt's host-deploy, in our shape.

oVirt reinstalls a host in Maintenance: host-deploy runs again (packages,
VDSM, certificates), then the host is activated. Here the engine does it
itself, over SSH as root with its own key (engine_lib.engine_key):

1. The host must be in Maintenance. One that is not is put there first,
   the way oVirt's UI does it: its VMs migrate away (services.maintenance);
   when one cannot move, the request is refused and nothing changes.
2. Status ``Installing``; the engine builds its agent wheel (engine_lib.wheel:
   the engine's own engine_lib, reproducible), copies it to the host and
   pip-installs it into the agent venv (no index, no dependencies), as the
   host role does (and marks it the same way, so the role sees it installed).
3. The agent certificate is re-enrolled when it expires within
   ``CERT_RENEW_DAYS`` or on request: the host makes the CSR with its key
   (which never leaves it), the engine CA signs it - only for the key the
   host's current certificate (from the engine CA, for that host) holds. A new
   key pair is made only when re-keying is asked for (``enroll_certificate``).
4. The agent restarts: ``systemctl restart kestrel-agent`` under systemd,
   otherwise through its pidfile (stop that PID, wait for it to exit, start
   the new one), like the role's agent_daemon.yml.
5. Once it answers over mutual TLS, it gets the engine CA's current revocation
   list (services.revocation); the host row records the agent's version,
   its wheel's checksum and when; the host is activated (Up) unless asked
   not to, and stays in Maintenance otherwise.

Any failure leaves the host ``InstallFailed`` with the reason (audited and in
``install_error``) and nothing else changed: it is not polled or scheduled
until a reinstall succeeds.

Reinstall is idempotent: it runs only when the host's recorded agent build
(version and wheel checksum) differs from the engine's, when the last one
failed, or when forced (or a certificate renewal is asked for).

Commands reach the host as ``ssh ... -- ADDRESS 'argv'``: the remote shell
parses the command line, so every argument is quoted (shlex), and the scripts
are constants that take their data as positional arguments. ssh accepts only
the host's SSH host keys recorded at its enrollment (services.host_keys); one
login before anything changes refuses a host whose key is not one of them.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from engine_lib import engine_key, pki
from engine_lib.model import utcnow
from engine_lib.protocol.errors import AgentUnreachable, Conflict, InvalidSpec, KestrelError
from engine_lib.protocol.statuses import HostStatus
from engine_lib.services import host_keys, maintenance
from engine_lib.services.common import audit, get_host, retry_on_conflict
from engine_lib.services.host_records import host_dict, record_capabilities
from engine_lib.services.results import Outcome
from engine_lib.wheel import DIST_NAME, TAG, build_agent_wheel

# Where the host role puts the agent; reinstall keeps to the same layout.
AGENT_VENV = "/opt/kestrel/agent"
WHEEL_DIR = "/opt/kestrel/wheels"
AGENT_CONF = "/etc/kestrel/agent.conf"
AGENT_KEY = "/etc/kestrel/pki/agent.key"
AGENT_CERT = "/etc/kestrel/pki/agent.pem"
AGENT_PIDFILE = "/run/kestrel/agent.pid"
AGENT_LOG = "/var/log/kestrel/agent.log"
CERT_RENEW_DAYS = 30
SSH_CONNECT_TIMEOUT_S = 10
STEP_TIMEOUT_S = 300.0
AGENT_START_TIMEOUT_S = 60.0

# A host in one of these may be reinstalled as it is (no maintenance first).
READY = frozenset({HostStatus.MAINTENANCE, HostStatus.INSTALL_FAILED})

# $1 directory, $2 file name; the wheel on stdin. Written aside, then renamed.
UPLOAD = 'set -eu; umask 022; mkdir -p "$1"; cat > "$1/.$2.tmp"; mv "$1/.$2.tmp" "$1/$2"'
# $1 venv, $2 wheel, $3 its sha1 (the host role's marker). Prints the installed version.
INSTALL = """set -eu
venv=$1 wheel=$2 sum=$3
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"
# Agents up to 0.1 came as the whole kestrel-engine distribution.
if [ -e "$venv/bin/kestrel" ]; then
    "$venv/bin/python" -m pip uninstall --yes --quiet kestrel-engine
fi
"$venv/bin/python" -m pip install --quiet --no-deps --no-index --force-reinstall \\
    --disable-pip-version-check "$wheel"
printf '%s\\n' "$sum" > "$venv/.kestrel-wheel"
"$venv/bin/python" -c 'import engine_lib, engine_lib.agent; print(engine_lib.__version__)'
"""
# $1 certificate path; the PEM on stdin.
PUT_CERT = 'set -eu; cat > "$1.new"; chmod 0644 "$1.new"; mv "$1.new" "$1"'
# $1 key path, $2 CN: a new key pair beside the current one (as the host role makes it);
# prints its CSR. The current key stays in use until REKEY_SWAP.
NEW_KEY = """set -eu
umask 077
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.new" 2>/dev/null
openssl req -new -key "$1.new" -subj "/CN=$2"
"""
# $1 key path, $2 certificate path; the new certificate on stdin: key and certificate
# replaced together.
REKEY_SWAP = """set -eu
cat > "$2.new"; chmod 0644 "$2.new"
mv "$1.new" "$1"; mv "$2.new" "$2"
"""
# What ssh says when the host's key is not a recorded one (or none is recorded).
HOST_KEY_REFUSED = b"Host key verification failed"
# $1 venv, $2 config, $3 pidfile, $4 log file. Stops the running agent by the PID in its
# pidfile (never by name) and starts the new one; prints "old=PID pid=PID".
RESTART = """set -u
venv=$1 conf=$2 pidfile=$3 log=$4
if [ -d /run/systemd/system ] && systemctl cat kestrel-agent >/dev/null 2>&1; then
    systemctl restart kestrel-agent || exit 1
    echo "old=systemd pid=$(systemctl show -p MainPID --value kestrel-agent)"
    exit 0
fi
# PID 1 may not reap: a zombie counts as exited.
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }
old=$(cat "$pidfile" 2>/dev/null || true)
case "$old" in ''|*[!0-9]*) old= ;; esac
if [ -n "$old" ] && alive "$old" \\
        && tr '\\0' ' ' < "/proc/$old/cmdline" | grep -q -e kestrel -e engine_lib; then
    kill -TERM "$old"
    tries=0
    while alive "$old"; do
        tries=$((tries + 1))
        if [ "$tries" -gt 150 ]; then echo "agent $old did not exit in 30s" >&2; exit 1; fi
        sleep 0.2
    done
fi
mkdir -p "$(dirname "$pidfile")" "$(dirname "$log")"
"$venv/bin/kestrel-agent" --config "$conf" --daemon --pidfile "$pidfile" \\
    --log-file "$log" </dev/null >/dev/null || exit 1
echo "old=${old:-none} pid=$(cat "$pidfile")"
"""


class HostDeployFailed(Conflict):
    """A reinstall step failed; the host is InstallFailed with this reason."""

    code = "HostDeployFailed"


class HostKeyChanged(Conflict):
    """The host's SSH host key is not the one recorded; nothing was changed."""

    code = "HostKeyChanged"


@dataclass(frozen=True)
class Build:
    """The agent build the engine installs: its own engine_lib as a wheel."""

    path: str
    version: str
    sha256: str
    sha1: str  # what the host role records next to the venv

    @classmethod
    def of(cls, path: str) -> Build:
        data = Path(path).read_bytes()
        name = Path(path).name
        version = name[len(DIST_NAME) + 1:-len(f"-{TAG}.whl")]
        return cls(path, version, hashlib.sha256(data).hexdigest(),
                   hashlib.sha1(data).hexdigest())


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


class SshRemote:
    """Runs argv lists on one host as root over SSH with the engine's key."""

    def __init__(self, address: str, key: str, host_key_options: list[str],
                 connect_timeout: int = SSH_CONNECT_TIMEOUT_S):
        if not address or address.startswith("-") or any(c.isspace() for c in address):
            raise InvalidSpec("address", f"{address!r} cannot be an SSH destination")
        self.address, self.key, self.host_key_options = address, key, host_key_options
        self.connect_timeout = connect_timeout

    def argv(self, command: list[str]) -> list[str]:
        return ["ssh", "-i", self.key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                *self.host_key_options, "-o", "LogLevel=ERROR",
                "-o", f"ConnectTimeout={self.connect_timeout}", "-l", "root",
                "--", self.address, shlex.join(command)]

    def run(self, command: list[str], input: bytes | None = None,
            timeout: float = STEP_TIMEOUT_S) -> Completed:
        try:
            done = subprocess.run(self.argv(command), input=input if input is not None else b"",
                                  capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return Completed(-1, b"", f"no answer within {timeout:.0f}s".encode())
        except OSError as err:
            return Completed(-1, b"", f"ssh: {err}".encode())
        return Completed(done.returncode, done.stdout, done.stderr)


def _sh(script: str, label: str, *args: str) -> list[str]:
    """``sh -c SCRIPT LABEL ARGS...``: constant code, data only as positional arguments."""
    return ["sh", "-c", script, label, *args]


class _StepFailed(Exception):
    def __init__(self, step: str, reason: str):
        super().__init__(f"{step}: {reason}")
        self.step, self.reason = step, reason


def _state(status: str, version: str, sha256: str) -> dict:
    """What --diff compares."""
    return {"status": status, "agent_version": version, "agent_wheel_sha256": sha256}


def _check_bool(field: str, value) -> None:
    if not isinstance(value, bool):
        raise InvalidSpec(field, f"must be true or false (got {value!r})")


class HostDeploy:
    """``reinstall`` is the one entry point; ``remote_factory`` is replaceable for unit tests."""

    def __init__(self, engine, remote_factory: Callable[[str, str, str], object] | None = None,
                 start_timeout: float = AGENT_START_TIMEOUT_S):
        self.engine = engine
        self.remote_factory = remote_factory or self._ssh
        self.start_timeout = start_timeout

    def _ssh(self, name: str, address: str, keys: str) -> SshRemote:
        """SSH to the host as root, accepting only its recorded host keys."""
        engine_dir = self.engine.config.engine_dir
        return SshRemote(address, str(engine_key.require(engine_dir)),
                         host_keys.login_options(engine_dir, name, keys))

    def build(self) -> Build:
        return Build.of(build_agent_wheel(str(Path(self.engine.config.engine_dir) / "wheels")))

    # -- the decision ----------------------------------------------------------------------

    def reinstall(self, name: str, *, force: bool = False, activate: bool = True,
                  renew_certificate: bool = False, enroll_certificate: bool = False,
                  ssh_host_keys: list[str] | None = None, timeout: float = 600,
                  check_mode: bool = False) -> Outcome:
        for field, value in (("force", force), ("activate", activate),
                             ("renew_certificate", renew_certificate),
                             ("enroll_certificate", enroll_certificate)):
            _check_bool(field, value)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidSpec("timeout", f"must be a positive number of seconds (got {timeout!r})")
        new_keys = None if ssh_host_keys is None \
            else host_keys.normalize("ssh_host_keys", ssh_host_keys)
        build = self.build()
        with self.engine.store.transaction(commit=False) as session:
            host = get_host(session, name)
            status, address, port = host.status, host.address, host.port
            keys = new_keys or host.ssh_host_keys
            before = _state(host.status, host.agent_version, host.agent_wheel_sha256)
            entity = host_dict(host)
            why = self._why(host, build, force, renew_certificate or enroll_certificate)
        if why is None:
            return Outcome(False, entity, {"before": before, "after": before})
        if status == HostStatus.INSTALLING and not force:
            raise Conflict(f"host '{name}' is Installing: another reinstall is running (or was "
                           "interrupted: run again with force to take over); nothing was changed",
                           host=name)
        after = _state(HostStatus.UP if activate else HostStatus.MAINTENANCE,
                       build.version, build.sha256)
        if check_mode:
            if status not in READY | {HostStatus.INSTALLING}:
                # Raises, changing nothing, when a VM could not move away.
                maintenance.enter(self.engine, name, check_mode=True, timeout=timeout)
            return Outcome(True, {**entity, **after}, {"before": before, "after": after})

        engine_key.require(self.engine.config.engine_dir)  # before anything changes
        remote = self.remote_factory(name, address, keys)
        self._check_host_key(remote, name, address)
        if new_keys is not None:
            self._record_host_keys(name, new_keys)
        if status not in READY | {HostStatus.INSTALLING}:
            maintenance.enter(self.engine, name, timeout=timeout)
        self._mark_installing(name, why)
        try:
            report = self._deploy(remote, name, address, build, renew_certificate,
                                  enroll_certificate)
            capabilities = self._wait_for_agent(address, port)
            self._install_crl(address, port)
        except _StepFailed as err:
            self._mark_failed(name, err)
            raise HostDeployFailed(f"reinstalling host '{name}' failed at {err.step}: "
                                   f"{err.reason}; the host is InstallFailed", host=name,
                                   step=err.step, reason=err.reason) from None
        self._mark_installed(name, build, report, capabilities)
        if activate:  # as `activate` does: Up, then its cluster's NFS domains mounted
            self.engine.hosts.activate(name)
        with self.engine.store.transaction(commit=False) as session:
            entity = host_dict(get_host(session, name))
        return Outcome(True, entity, {"before": before, "after": after})

    @staticmethod
    def _why(host, build: Build, force: bool, renew_certificate: bool) -> str | None:
        """Why this host needs a reinstall, or None when it has the engine's build."""
        if force:
            return "forced"
        if renew_certificate:
            return "a new certificate requested"
        if host.status in (HostStatus.INSTALL_FAILED, HostStatus.INSTALLING):
            return f"the last reinstall did not finish ({host.status})"
        if (host.agent_version, host.agent_wheel_sha256) != (build.version, build.sha256):
            have = (f"{host.agent_version} (wheel {host.agent_wheel_sha256[:12]})"
                    if host.agent_version else "an agent the engine did not install")
            return f"it runs {have}, the engine's is {build.version} (wheel {build.sha256[:12]})"
        return None

    # -- the steps on the host -------------------------------------------------------------

    def _deploy(self, remote, name: str, address: str, build: Build,
                renew_certificate: bool, enroll_certificate: bool) -> dict:
        wheel_name = Path(build.path).name

        def step(label: str, command: list[str], input: bytes | None = None) -> str:
            done = remote.run(command, input=input)
            if done.returncode != 0 and HOST_KEY_REFUSED in done.stderr:
                raise _StepFailed(label, _host_key_refused(name, address))
            if done.returncode != 0:
                output = (done.stderr or done.stdout or b"").decode(errors="replace").strip()
                raise _StepFailed(label, f"exit {done.returncode}"
                                  + (f": {output[-400:]}" if output else ""))
            return done.stdout.decode(errors="replace").strip()

        step("copying the agent wheel", _sh(UPLOAD, "kestrel-upload", WHEEL_DIR, wheel_name),
             Path(build.path).read_bytes())
        installed = step("installing the agent", _sh(
            INSTALL, "kestrel-install", AGENT_VENV, f"{WHEEL_DIR}/{wheel_name}", build.sha1))
        installed = installed.splitlines()[-1] if installed else ""
        if installed != build.version:
            raise _StepFailed("installing the agent", f"the venv reports engine_lib "
                              f"{installed!r}, not {build.version!r}")
        certificate = (self._rekey(step, name, address) if enroll_certificate
                       else self._certificate(remote, step, name, address, renew_certificate))
        restarted = step("restarting the agent", _sh(
            RESTART, "kestrel-restart", AGENT_VENV, AGENT_CONF, AGENT_PIDFILE, AGENT_LOG))
        pids = dict(part.split("=", 1) for part in restarted.split() if "=" in part)
        return {"version": installed, "certificate": certificate,
                "old_pid": pids.get("old", "none"), "pid": pids.get("pid", "")}

    def _certificate(self, remote, step, name: str, address: str, requested: bool) -> str:
        """Re-enroll the agent certificate when asked or when it expires soon."""
        if not requested:
            valid = remote.run(["openssl", "x509", "-in", AGENT_CERT, "-noout", "-checkend",
                                str(CERT_RENEW_DAYS * 86400)])
            if valid.returncode == 0:
                return f"kept (valid for more than {CERT_RENEW_DAYS} days)"
        enrolled = self._enrolled_key(step, name)
        csr = step("re-enrolling the agent certificate",
                   ["openssl", "req", "-new", "-key", AGENT_KEY, "-subj", f"/CN={name}"])
        _check_csr(csr, name, enrolled)
        try:
            cert = pki.sign_csr(str(self.engine.config.pki_dir), csr.encode(), name, [address])
        except KestrelError as err:
            raise _StepFailed("re-enrolling the agent certificate", err.message) from None
        step("installing the agent certificate", _sh(PUT_CERT, "kestrel-cert", AGENT_CERT), cert)
        return "renewed" + ("" if requested else f" (it expired within {CERT_RENEW_DAYS} days)")

    # -- the host's identity: its SSH host key, its certificate's key ------------------------

    def _check_host_key(self, remote, name: str, address: str) -> None:
        """One login before anything changes: a host whose SSH host key is not a recorded
        one is refused here, loudly, with the host left as it is."""
        done = remote.run(["true"], timeout=SSH_CONNECT_TIMEOUT_S * 3)
        if done.returncode != 0 and HOST_KEY_REFUSED in done.stderr:
            raise HostKeyChanged(_host_key_refused(name, address) + "; nothing was changed",
                                 host=name)

    @retry_on_conflict
    def _record_host_keys(self, name: str, keys: str) -> None:
        """The operator's new host keys, once a login with them succeeded."""
        with self.engine.store.transaction() as session:
            if host_keys.record(session, name, keys):
                audit(session, "host", name, "SSH host keys replaced by the operator's "
                      f"({len(host_keys.listed(keys))} key(s))", "warning")

    def _enrolled_key(self, step, name: str):
        """The public key of the host's current certificate, which the engine CA issued for
        it: the only key a renewal may certify."""
        label = "re-enrolling the agent certificate"
        pem = step(label, ["cat", AGENT_CERT])
        ca = x509.load_pem_x509_certificate((self.engine.config.pki_dir / pki.CA_CERT).read_bytes())
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise _StepFailed(label, f"{AGENT_CERT} on the host is not a certificate of the "
                              f"engine CA ({err}): re-key it with enroll_certificate") from None
        if _common_name(cert.subject) != name:
            raise _StepFailed(label, f"{AGENT_CERT} on the host names "
                              f"{_common_name(cert.subject)!r}, not {name!r}: re-key it with "
                              "enroll_certificate")
        return cert.public_key()

    def _rekey(self, step, name: str, address: str) -> str:
        """A new key pair made on the host and a certificate for it (re-keying on request)."""
        label = "re-keying the agent certificate"
        csr = step(label, _sh(NEW_KEY, "kestrel-new-key", AGENT_KEY, name))
        _check_csr(csr, name, None)
        try:
            cert = pki.sign_csr(str(self.engine.config.pki_dir), csr.encode(), name, [address])
        except KestrelError as err:
            raise _StepFailed(label, err.message) from None
        step("installing the new agent key and certificate",
             _sh(REKEY_SWAP, "kestrel-rekey", AGENT_KEY, AGENT_CERT), cert)
        return "re-keyed (a new key pair, as asked)"

    def _wait_for_agent(self, address: str, port: int) -> dict:
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                return self.engine.agent(address, port).host_info(timeout=5)
            except AgentUnreachable as err:
                if time.monotonic() > deadline:
                    raise _StepFailed("waiting for the agent", f"it did not answer over mutual "
                                      f"TLS within {self.start_timeout:.0f}s: {err.message}") from None
                time.sleep(0.5)
            except KestrelError as err:
                raise _StepFailed("waiting for the agent", err.message) from None

    def _install_crl(self, address: str, port: int) -> None:
        """The engine CA's current revocation list, for the agent, libvirt and QEMU: a host
        that was down when another was removed learns of the revocation here."""
        try:
            self.engine.agent(address, port).install_crl(
                pki.crl(str(self.engine.config.pki_dir)).decode())
        except KestrelError as err:
            raise _StepFailed("installing the certificate revocation list", err.message) from None

    # -- what the database records ---------------------------------------------------------

    @retry_on_conflict
    def _mark_installing(self, name: str, why: str) -> None:
        with self.engine.store.transaction() as session:
            host = get_host(session, name)
            if host.status not in READY | {HostStatus.INSTALLING}:
                raise Conflict(f"host '{name}' is {host.status}, not Maintenance: it cannot be "
                               "reinstalled now; nothing was changed", host=name)
            previous, host.status = host.status, HostStatus.INSTALLING
            audit(session, "host", name, f"host reinstall started (was {previous}): {why}")

    @retry_on_conflict
    def _mark_failed(self, name: str, err: _StepFailed) -> None:
        with self.engine.store.transaction() as session:
            host = get_host(session, name)
            host.status = HostStatus.INSTALL_FAILED
            host.install_error = f"{err.step}: {err.reason}"
            audit(session, "host", name, f"host reinstall failed at {err.step}: {err.reason}; "
                  "the host is InstallFailed", "error")

    @retry_on_conflict
    def _mark_installed(self, name: str, build: Build, report: dict, capabilities: dict) -> None:
        with self.engine.store.transaction() as session:
            host = get_host(session, name)
            record_capabilities(host, capabilities)
            # Installed, not yet active: `activate` (maintenance.leave) makes it Up.
            host.status = HostStatus.MAINTENANCE
            host.agent_version, host.agent_wheel_sha256 = build.version, build.sha256
            host.agent_installed_at, host.install_error = utcnow(), ""
            audit(session, "host", name, f"host reinstalled: agent {build.version} (wheel sha256 "
                  f"{build.sha256[:12]}) installed in {AGENT_VENV}; certificate "
                  f"{report['certificate']}; agent restarted (pid {report['old_pid']} -> "
                  f"{report['pid']}) and answers over mutual TLS")


def _host_key_refused(name: str, address: str) -> str:
    return (f"the SSH host key of {address} is not the one recorded for host '{name}' "
            "(recorded when it enrolled): if it changed on purpose, give the new key as "
            "ssh_host_keys (the host's /etc/ssh/ssh_host_*_key.pub)")


def _common_name(subject: x509.Name) -> str:
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_csr(csr_pem: str, name: str, public_key) -> None:
    """Sign only what was expected: a CSR the key's holder signed, for this host's name,
    and - unless re-keying - for the key the host's current certificate holds."""
    label = "re-keying the agent certificate" if public_key is None \
        else "re-enrolling the agent certificate"
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        signed = csr.is_signature_valid
    except ValueError as err:
        raise _StepFailed(label, f"the host's answer is not a CSR ({err})") from None
    if not signed:
        raise _StepFailed(label, "the CSR's signature does not match its key")
    if _common_name(csr.subject) != name:
        raise _StepFailed(label, f"the CSR names {_common_name(csr.subject)!r}, not {name!r}")
    if public_key is not None and _spki(csr.public_key()) != _spki(public_key):
        raise _StepFailed(label, "the CSR is for another key than the host's certificate "
                          "holds: refused (re-key it with enroll_certificate if that is meant)")
