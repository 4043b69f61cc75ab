"""Hook scripts: the host administrator's way to adjust a VM on this host (VDSM's hooks).

    <hooks dir>/<hook point>/<script>     e.g. /etc/kestrel/hooks/before_vm_start/50_numa

Every executable file in a hook point's folder runs, in sorted name order,
with the domain XML in a temporary file whose path is in ``_hook_domxml``; a
script may rewrite that file, and the XML the last one leaves is the XML the
operation uses.

A script starts from a clean environment, not the agent's: ``PATH``
(``/usr/sbin:/usr/bin:/sbin:/bin``), ``LANG`` and ``LC_ALL`` (``C.UTF-8``), the
VM id (``vmId``), the hook point (``_hook_point``), ``_hook_domxml``, and each
of the VM's custom properties as ``KESTREL_PROP_<name>``. A property is a VM
owner's string and the script runs as root, so it never gets a name a program
interprets (``BASH_ENV``, ``PERL5OPT``, ``LD_PRELOAD``): a property whose name
is not a plain lowercase identifier, or whose value holds a NUL, is dropped
and logged (the engine refuses both before they get here).

A hook runs as root with the VM's XML in hand, so the agent refuses a hook
point whose folder (or the hooks root) is group- or world-writable, and a
script that is not owned by root or is writable by others: anyone who could
change it could run code as root. A refusal and a failing script both raise
HookError naming the hook point, the script and (for a failure) its stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import stat
import subprocess
import tempfile
from collections.abc import Mapping

from engine_lib.protocol import custom_properties as properties
from engine_lib.protocol.errors import HookError

log = logging.getLogger("kestrel.agent.hooks")

HOOK_POINTS = (
    "before_vm_start", "after_vm_start",
    "before_vm_migrate_source", "before_vm_migrate_destination",
    "after_vm_migrate_source", "after_vm_migrate_destination",
    "before_vm_hibernate", "after_vm_dehibernate",
    "before_vm_destroy", "after_vm_destroy",
    "before_device_create",
)
DEFAULT_TIMEOUT = 60.0
DOMXML_ENV = "_hook_domxml"
VM_ID_ENV = "vmId"
POINT_ENV = "_hook_point"
# All a script's environment holds besides these three and the properties.
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_STDERR_LIMIT = 4000
_UNSAFE_MODE = stat.S_IWGRP | stat.S_IWOTH


def run(point: str, xml: str, vm_id: str, hooks_dir: str,
        custom_properties: Mapping[str, str] | None = None, *,
        timeout: float = DEFAULT_TIMEOUT, owner_uid: int = 0) -> str:
    """Run every script of ``point`` over ``xml``; return the XML they leave.

    With no scripts (or no folder) the XML comes back unchanged and nothing
    runs. ``owner_uid`` is the owner scripts must have (root; a parameter only
    so the refusal can be shown without root).
    """
    if point not in HOOK_POINTS:
        raise HookError(f"unknown hook point '{point}' (expected one of "
                        f"{', '.join(HOOK_POINTS)})", hook_point=point)
    scripts = scripts_of(point, hooks_dir, owner_uid=owner_uid)
    if not scripts:
        return xml
    env = _environment(point, vm_id, custom_properties or {})
    fd, path = tempfile.mkstemp(prefix=f"kestrel-{point}-", suffix=".xml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(xml)
        env[DOMXML_ENV] = path
        for script in scripts:
            _run_script(point, script, env, timeout)
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    finally:
        os.unlink(path)


def scripts_of(point: str, hooks_dir: str, *, owner_uid: int = 0) -> list[str]:
    """The executable scripts of a hook point, sorted, after the safety checks."""
    folder = os.path.join(hooks_dir, point)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise HookError(f"hook point {point}: cannot list {folder}: {exc.strerror}",
                        hook_point=point, path=folder) from None
    if not names:
        return []
    for directory in (hooks_dir, folder):
        mode = os.stat(directory).st_mode
        if mode & _UNSAFE_MODE:
            raise HookError(f"hook point {point}: refusing to run hooks from {directory}: "
                            f"it is group- or world-writable (mode {stat.S_IMODE(mode):o})",
                            hook_point=point, path=directory)
    scripts = []
    for name in names:
        path = os.path.join(folder, name)
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IXUSR:
            continue  # READMEs, disabled (non-executable) hooks
        if st.st_uid != owner_uid:
            raise HookError(f"hook point {point}: refusing to run {path}: owned by uid "
                            f"{st.st_uid}, not by uid {owner_uid} (root)",
                            hook_point=point, script=path)
        if st.st_mode & _UNSAFE_MODE:
            raise HookError(f"hook point {point}: refusing to run {path}: it is group- or "
                            f"world-writable (mode {stat.S_IMODE(st.st_mode):o})",
                            hook_point=point, script=path)
        scripts.append(path)
    return scripts


# "50_sap_agent.py" provides the hook "sap_agent": the prefix only orders scripts.
_ORDER_PREFIX = re.compile(r"^\d+[_-]")


def installed(hooks_dir: str, *, owner_uid: int = 0) -> list[str]:
    """Names of the hooks this host provides, for the scheduler's hooks filter.

    A VM whose custom property names a hook needs a host that has it. Scripts
    the safety checks would refuse do not count: they would fail the start.
    """
    names = set()
    for point in HOOK_POINTS:
        try:
            scripts = scripts_of(point, hooks_dir, owner_uid=owner_uid)
        except HookError:
            continue
        for path in scripts:
            names.add(_ORDER_PREFIX.sub("", os.path.splitext(os.path.basename(path))[0]))
    return sorted(names)


def _environment(point: str, vm_id: str, custom_properties: Mapping[str, str]) -> dict[str, str]:
    env = dict(BASE_ENV)
    for name, value in custom_properties.items():
        if not properties.is_name(name) or "\0" in value:
            log.warning("custom property %r of VM %s dropped: hooks get only names of %s, "
                        "values without NUL", name, vm_id, properties.NAME_RULE)
            continue
        env[properties.env_name(name)] = value
    env[VM_ID_ENV] = vm_id
    env[POINT_ENV] = point
    return env


def _run_script(point: str, script: str, env: dict[str, str], timeout: float) -> None:
    # Its own session, so a timeout kills whatever the script started as well.
    try:
        process = subprocess.Popen([script], env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
    except OSError as exc:
        raise HookError(f"hook {point}/{os.path.basename(script)} could not run: "
                        f"{exc.strerror}", hook_point=point, script=script) from None
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise HookError(f"hook {point}/{os.path.basename(script)} did not finish within "
                        f"{timeout:g} s", hook_point=point, script=script) from None
    if process.returncode != 0:
        stderr = err.decode("utf-8", errors="replace").strip()[-_STDERR_LIMIT:]
        raise HookError(f"hook {point}/{os.path.basename(script)} failed with exit status "
                        f"{process.returncode}: {stderr or '(no stderr)'}",
                        hook_point=point, script=script, returncode=process.returncode,
                        stderr=stderr)
    log.info("hook %s/%s ran for VM %s", point, os.path.basename(script), env[VM_ID_ENV])
