"""Hook scripts: real executables in a temporary hooks directory."""

from __future__ import annotations

import os
import tempfile
import uuid
import xml.etree.ElementTree as ET

import libvirt
import pytest

from engine_lib.agent import hooks
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.vms import Hypervisor
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import HookError, VmNotFound

VM_ID = "6c1f3c1e-9a43-4c55-9d59-6a0c1f2d1b10"
XML = f"<domain type='test'><name>vm1</name><uuid>{VM_ID}</uuid></domain>"
ME = os.getuid()


def hook(hooks_dir, point: str, name: str, body: str, mode: int = 0o755) -> str:
    folder = hooks_dir / point
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    path = folder / name
    path.write_text("#!/bin/sh\nset -e\n" + body)
    path.chmod(mode)
    return str(path)


def run(point, hooks_dir, xml=XML, props=None):
    return hooks.run(point, xml, VM_ID, str(hooks_dir), props or {}, owner_uid=ME)


def test_scripts_run_in_sorted_order_and_the_xml_they_leave_is_used(tmp_path):
    log = tmp_path / "order"
    hook(tmp_path, "before_vm_start", "20_second",
         f'echo second >> {log}\nsed -i "s|<name>vm1</name>|<name>vm1</name>'
         f'<description>$vmId</description>|" "$_hook_domxml"\n')
    hook(tmp_path, "before_vm_start", "10_first", f"echo first >> {log}\n")
    result = run("before_vm_start", tmp_path)
    assert log.read_text().split() == ["first", "second"]
    assert ET.fromstring(result).findtext("description") == VM_ID


def environment_of_hooks(tmp_path, props, monkeypatch) -> dict[str, str]:
    """The exact environment a hook script was started with, read back from /proc."""
    # What an agent may have in its own environment; none of it is for hooks.
    for key, value in {"PERL5OPT": "-Mwarnings", "PYTHONPATH": "/srv/agent",
                       "AGENT_MARKER": "leaked", "PATH": "/opt/agent/bin:/usr/bin"}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "environ"
    hook(tmp_path, "before_vm_destroy", "50_env", f'cat /proc/$$/environ > {out}\n')
    run("before_vm_destroy", tmp_path, props=props)
    pairs = [item.split("=", 1) for item in out.read_text().split("\0") if item]
    return {key: value for key, value in pairs}


def test_hooks_start_from_a_clean_environment_with_properties_namespaced(tmp_path, monkeypatch):
    env = environment_of_hooks(tmp_path, {
        "sap_agent": "true", "note": "two\nlines", "_hook_domxml": "/etc/passwd",
        "BASH_ENV": "/tmp/x", "PERL5OPT": "-Mx", "LD_PRELOAD": "/tmp/x.so", "not-a-name": "x",
        "nul": "a\0b"}, monkeypatch)
    domxml = env.pop("_hook_domxml")
    assert env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                   "LC_ALL": "C.UTF-8", "vmId": VM_ID, "_hook_point": "before_vm_destroy",
                   "KESTREL_PROP_sap_agent": "true", "KESTREL_PROP_note": "two\nlines"}
    assert domxml.startswith(tempfile.gettempdir()) and domxml != "/etc/passwd"


def test_dropped_properties_are_logged(tmp_path, monkeypatch, caplog):
    environment_of_hooks(tmp_path, {"BASH_ENV": "/tmp/x", "nul": "a\0b"}, monkeypatch)
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 2 and "'BASH_ENV'" in dropped[0] and "'nul'" in dropped[1]


def test_a_property_cannot_make_a_bash_hook_run_a_file(tmp_path):
    # BASH_ENV names a file every non-interactive bash runs first: as root, here.
    marker, payload = tmp_path / "owned", tmp_path / "payload"
    payload.write_text(f"touch {marker}\n")
    hook(tmp_path, "before_vm_start", "50_bash", "exit 0\n")
    script = tmp_path / "before_vm_start" / "50_bash"
    script.write_text("#!/bin/bash\nexit 0\n")
    run("before_vm_start", tmp_path, props={"BASH_ENV": str(payload)})
    assert not marker.exists()


def test_no_folder_or_no_executable_means_nothing_runs(tmp_path):
    assert run("after_vm_start", tmp_path) == XML
    marker = tmp_path / "ran"
    hook(tmp_path, "after_vm_start", "README", f"touch {marker}\n", mode=0o644)
    assert run("after_vm_start", tmp_path) == XML
    assert not marker.exists()


def test_a_failing_script_fails_with_its_name_and_stderr_and_stops_the_rest(tmp_path):
    marker = tmp_path / "ran"
    hook(tmp_path, "before_vm_start", "10_fail", "echo 'no hugepages left' >&2\nexit 3\n")
    hook(tmp_path, "before_vm_start", "20_after", f"touch {marker}\n")
    with pytest.raises(HookError, match=r"hook before_vm_start/10_fail failed with exit "
                                        r"status 3: no hugepages left") as err:
        run("before_vm_start", tmp_path)
    assert err.value.details["stderr"] == "no hugepages left"
    assert not marker.exists()


@pytest.mark.parametrize("where", ["root", "point"])
def test_a_group_or_world_writable_directory_is_refused(tmp_path, where):
    marker = tmp_path / "ran"
    hook(tmp_path, "before_vm_start", "10_hook", f"touch {marker}\n")
    (tmp_path if where == "root" else tmp_path / "before_vm_start").chmod(0o777)
    with pytest.raises(HookError, match="refusing to run hooks from .* group- or "
                                        "world-writable"):
        run("before_vm_start", tmp_path)
    assert not marker.exists()


def test_a_script_writable_by_others_or_owned_by_someone_else_is_refused(tmp_path):
    path = hook(tmp_path, "before_vm_start", "10_hook", "true\n", mode=0o775)
    with pytest.raises(HookError, match="10_hook: it is group- or world-writable"):
        run("before_vm_start", tmp_path)
    os.chmod(path, 0o755)
    with pytest.raises(HookError, match=rf"refusing to run {path}: owned by uid {ME}, "
                                        rf"not by uid {ME + 1} \(root\)"):
        hooks.run("before_vm_start", XML, VM_ID, str(tmp_path), owner_uid=ME + 1)


def test_every_documented_hook_point_exists_and_others_are_refused(tmp_path):
    assert len(hooks.HOOK_POINTS) == 11
    for point in hooks.HOOK_POINTS:
        assert run(point, tmp_path) == XML
    with pytest.raises(HookError, match="unknown hook point 'before_lunch'"):
        run("before_lunch", tmp_path)


# -- wired into the hypervisor (libvirt's test driver) ---------------------------------


def _domain_xml(vm_id: str) -> str:
    return f"""<domain type='test'><name>hooks-{vm_id[:8]}</name><uuid>{vm_id}</uuid>
  <metadata><kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>
    <kestrel:custom name='owner'>team-a</kestrel:custom></kestrel:vm></metadata>
  <memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"""


@pytest.fixture
def hypervisor(tmp_path):
    config = AgentConfig(name="t", address="127.0.0.1", port=0, libvirt_uri="test:///default",
                         ca="/ca", cert="/c", key="/k", paths={"hooks": str(tmp_path)},
                         source="test")
    hv = Hypervisor(config)
    hv.hook_owner_uid = ME
    started: list[str] = []
    yield hv, started
    conn = hv.connection()
    for vm_id in started:
        try:
            dom = conn.lookupByUUIDString(vm_id)
        except libvirt.libvirtError:
            continue
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    hv.close()


def test_before_vm_start_edits_the_domain_that_starts(hypervisor, tmp_path):
    hv, started = hypervisor
    hook(tmp_path, "before_vm_start", "50_describe",
         'sed -i "s|</name>|</name><description>owner $KESTREL_PROP_owner</description>|" '
         '"$_hook_domxml"\n')
    vm_id = str(uuid.uuid4())
    started.append(vm_id)
    assert hv.start(_domain_xml(vm_id))["status"] == "Up"
    live = ET.fromstring(hv.xml(vm_id)["xml"])
    assert live.findtext("description") == "owner team-a"


def test_a_failing_before_vm_start_leaves_nothing_defined(hypervisor, tmp_path):
    hv, started = hypervisor
    hook(tmp_path, "before_vm_start", "50_no", "echo 'not on this host' >&2; exit 1\n")
    vm_id = str(uuid.uuid4())
    started.append(vm_id)
    with pytest.raises(HookError, match="before_vm_start/50_no failed .*: not on this host"):
        hv.start(_domain_xml(vm_id))
    with pytest.raises(VmNotFound):
        hv.status(vm_id)


def test_destroy_runs_its_hooks_and_a_failing_after_hook_is_a_warning(hypervisor, tmp_path):
    hv, started = hypervisor
    seen = tmp_path / "seen"
    hook(tmp_path, "before_vm_destroy", "50_note", f'echo "before $vmId" >> {seen}\n')
    hook(tmp_path, "after_vm_destroy", "50_fail", "echo 'cleanup failed' >&2; exit 1\n")
    vm_id = str(uuid.uuid4())
    started.append(vm_id)
    hv.start(_domain_xml(vm_id))
    result = hv.destroy(vm_id)
    assert (result["status"], result["exit_reason"]) == ("Down", "destroyed")
    assert seen.read_text() == f"before {vm_id}\n"
    assert result["hook_warnings"] == ["hook after_vm_destroy/50_fail failed with exit "
                                       "status 1: cleanup failed"]


def test_a_failing_before_vm_destroy_keeps_the_vm_running(hypervisor, tmp_path):
    hv, started = hypervisor
    vm_id = str(uuid.uuid4())
    started.append(vm_id)
    hv.start(_domain_xml(vm_id))
    hook(tmp_path, "before_vm_destroy", "50_no", "echo busy >&2; exit 1\n")
    with pytest.raises(HookError, match="before_vm_destroy/50_no .*: busy"):
        hv.destroy(vm_id)
    assert hv.status(vm_id)["status"] == "Up"


def test_a_script_that_hangs_is_stopped_and_named(tmp_path):
    hook(tmp_path, "before_vm_migrate_source", "50_hang", "sleep 30\n")
    with pytest.raises(HookError, match=r"hook before_vm_migrate_source/50_hang did not "
                                        r"finish within 0.3 s"):
        hooks.run("before_vm_migrate_source", XML, VM_ID, str(tmp_path), owner_uid=ME,
                  timeout=0.3)


def test_before_vm_start_must_leave_the_same_vm(hypervisor, tmp_path):
    hv, started = hypervisor
    other = str(uuid.uuid4())
    hook(tmp_path, "before_vm_start", "50_swap", f'sed -i "s|<uuid>.*</uuid>|<uuid>{other}'
                                                 f'</uuid>|" "$_hook_domxml"\n')
    vm_id = str(uuid.uuid4())
    started.extend([vm_id, other])
    with pytest.raises(HookError, match=f"changed the domain UUID from {vm_id} to {other}"):
        hv.start(_domain_xml(vm_id))
    hook(tmp_path, "before_vm_start", "50_swap", 'echo "<domain" > "$_hook_domxml"\n')
    with pytest.raises(HookError, match="left XML that is not a domain: not well-formed"):
        hv.start(_domain_xml(vm_id))


def test_installed_hooks_are_named_without_their_order_prefix(tmp_path):
    hook(tmp_path, "before_vm_start", "50_sap_agent.py", "exit 0\n")
    hook(tmp_path, "after_vm_destroy", "10-sap_agent", "exit 0\n")
    hook(tmp_path, "before_vm_start", "README", "", mode=0o644)  # not executable: no hook
    hook(tmp_path, "after_vm_start", "20_unsafe", "exit 0\n", mode=0o777)  # would be refused
    assert hooks.installed(str(tmp_path), owner_uid=ME) == ["sap_agent"]


def test_host_info_reports_what_the_scheduler_filters_on(hypervisor, tmp_path):
    hv, _ = hypervisor
    hook(tmp_path, "before_vm_start", "50_numa_tuning", "exit 0\n")
    facts = hv.host_info()
    assert facts["hooks"] == ["numa_tuning"]
    assert facts["machines"] is None  # libvirt's test driver lists no machine types
    assert isinstance(facts["networks"], list)
    assert facts["used_memory_mib"] >= 0
