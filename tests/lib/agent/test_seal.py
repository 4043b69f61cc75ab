"""Sealing a volume: virt-sysprep's command line, environment and the file it is given.

A stand-in virt-sysprep (a shell script) records what it got; the real one
is in tests/system/test_seal.py. qemu-img is the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from engine_lib.agent import config, seal
from engine_lib.agent.api import Api
from engine_lib.agent.config import SealConfig
from engine_lib.agent.volumes import VolumeLocation
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError

LOCATION = VolumeLocation("data", "img", "vol")

# Records argv, the environment and the bytes behind -a (read through the path given).
RECORDER = """#!/bin/sh
out={out}
printf '%s\\n' "$@" > $out/argv
env > $out/env
disk=$(printf '%s\\n' "$@" | sed -n '/^-a$/{{n;p}}')
cat "$disk" > $out/disk
{tail}
"""


@pytest.fixture
def domains(tmp_path):
    (tmp_path / "data" / "img").mkdir(parents=True)
    (tmp_path / "data" / "img" / "vol").write_bytes(b"the template's bytes")
    return {"data": str(tmp_path / "data")}


@pytest.fixture
def sysprep(tmp_path, monkeypatch):
    """Install a stand-in virt-sysprep whose last lines are ``tail``; returns its output dir."""
    out = tmp_path / "out"
    out.mkdir()

    def install(tail: str = "echo sealed") -> str:
        script = tmp_path / "virt-sysprep"
        script.write_text(RECORDER.format(out=out, tail=tail))
        script.chmod(0o755)
        monkeypatch.setattr(seal, "VIRT_SYSPREP", str(script))
        return str(out)
    return install


def _config(tmp_path, **kwargs) -> SealConfig:
    return SealConfig(cache_dir=str(tmp_path / "cache"), **kwargs)


def test_command_pins_the_format_cuts_the_network_and_runs_the_safe_operations():
    argv = seal.command("/proc/self/fd/7", "qcow2")
    assert argv[:6] == ["virt-sysprep", "--format", "qcow2", "-a", "/proc/self/fd/7",
                        "--no-network"]
    operations = argv[argv.index("--operations") + 1].split(",")
    assert {"machine-id", "ssh-hostkeys", "logfiles", "bash-history", "net-hwaddr",
            "dhcp-client-state", "tmp-files", "udev-persistent-net"} == set(operations)
    assert "customize" not in operations and "--hostname" not in argv


def test_a_hostname_adds_customize_and_keeps_the_machine_id_empty():
    argv = seal.command("/d", "raw", "web-1.example.com")
    assert "customize" in argv[argv.index("--operations") + 1].split(",")
    assert argv[-4:] == ["--hostname", "web-1.example.com", "--truncate", "/etc/machine-id"]


@pytest.mark.parametrize("hostname", ["-x", "a b", "a;reboot", "x" * 64, "a..b", 7])
def test_bad_hostnames_are_refused_naming_the_field(hostname):
    with pytest.raises(InvalidSpec) as err:
        seal.command("/d", "qcow2", hostname)
    assert err.value.field == "hostname"


def test_an_unknown_format_is_refused():
    with pytest.raises(InvalidSpec) as err:
        seal.command("/d", "vmdk")
    assert err.value.field == "volume.format"


def test_environment_is_clean_and_carries_the_appliance_settings(tmp_path):
    env = seal.environment(_config(tmp_path))
    assert set(env) == {"PATH", "LANG", "HOME", "TMPDIR", "LIBGUESTFS_CACHEDIR",
                        "LIBGUESTFS_BACKEND"}
    assert env["LIBGUESTFS_BACKEND"] == "direct"
    fixed = seal.environment(_config(tmp_path, appliance="/srv/app", tcg=True))
    assert (fixed["LIBGUESTFS_PATH"], fixed["LIBGUESTFS_BACKEND_SETTINGS"]) == \
        ("/srv/app", "force_tcg")
    kernel = seal.environment(_config(tmp_path, kernel="/k/vmlinuz-6.1.0-57-amd64",
                                      modules="/k/lib/modules/6.1.0-57-amd64/"))
    assert (kernel["SUPERMIN_KERNEL"], kernel["SUPERMIN_MODULES"],
            kernel["SUPERMIN_KERNEL_VERSION"]) == \
        ("/k/vmlinuz-6.1.0-57-amd64", "/k/lib/modules/6.1.0-57-amd64/", "6.1.0-57-amd64")


def test_seal_hands_over_the_checked_file_with_nothing_of_the_agents_environment(
        tmp_path, domains, sysprep, monkeypatch):
    monkeypatch.setenv("KESTREL_SECRET", "root's")
    monkeypatch.setenv("LIBGUESTFS_DEBUG", "1")
    out = sysprep()
    result = seal.seal(LOCATION, domains, "raw", _config(tmp_path, appliance="/srv/app"),
                       hostname="tmpl")
    argv = open(f"{out}/argv").read().split("\n")
    assert argv[3].startswith("/proc/self/fd/")
    assert open(f"{out}/disk", "rb").read() == b"the template's bytes"
    env = dict(line.split("=", 1) for line in open(f"{out}/env").read().splitlines()
               if "=" in line)
    assert "KESTREL_SECRET" not in env and "LIBGUESTFS_DEBUG" not in env
    assert env["LIBGUESTFS_PATH"] == "/srv/app"
    assert (result["path"], result["hostname"], result["output"]) == \
        (f"{domains['data']}/img/vol", "tmpl", "sealed")
    assert "customize" in result["operations"]
    assert os.stat(tmp_path / "cache").st_mode & 0o777 == 0o700


def test_a_volume_reached_through_a_link_is_refused_and_nothing_runs(tmp_path, sysprep):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "vol").write_bytes(b"host file")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "img").symlink_to(tmp_path / "elsewhere")
    out = sysprep()
    with pytest.raises(InvalidSpec, match="symlink"):
        seal.seal(LOCATION, {"data": str(tmp_path / "data")}, "raw", _config(tmp_path))
    (tmp_path / "data" / "img").unlink()
    (tmp_path / "data" / "img").mkdir()
    (tmp_path / "data" / "img" / "vol").symlink_to(tmp_path / "elsewhere" / "vol")
    with pytest.raises(InvalidSpec, match="symlink"):
        seal.seal(LOCATION, {"data": str(tmp_path / "data")}, "raw", _config(tmp_path))
    assert os.listdir(out) == []


def test_a_missing_volume_or_domain_is_named(tmp_path, domains, sysprep):
    sysprep()
    with pytest.raises(InvalidSpec, match="does not exist"):
        seal.seal(VolumeLocation("data", "img", "nope"), domains, "raw", _config(tmp_path))
    with pytest.raises(InvalidSpec) as err:
        seal.seal(VolumeLocation("other", "img", "vol"), domains, "raw", _config(tmp_path))
    assert err.value.field == "volume.domain"


@pytest.mark.parametrize("options, reason", [
    (["-b", "/etc/hostname", "-F", "raw"], "backing file (/etc/hostname)"),
    (["-o", "data_file={tmp}/data.raw"], "external data file"),
])
def test_a_qcow2_naming_a_host_file_is_refused(tmp_path, domains, sysprep, options, reason):
    vol = f"{domains['data']}/img/vol"
    os.unlink(vol)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                    *[o.format(tmp=tmp_path) for o in options], vol, "1M"], check=True)
    out = sysprep()
    with pytest.raises(InvalidSpec, match=reason.replace("(", r"\(").replace(")", r"\)")):
        seal.seal(LOCATION, domains, "qcow2", _config(tmp_path))
    assert os.listdir(out) == []


def test_a_plain_qcow2_is_sealed(tmp_path, domains, sysprep):
    vol = f"{domains['data']}/img/vol"
    os.unlink(vol)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", vol, "1M"], check=True)
    out = sysprep()
    seal.seal(LOCATION, domains, "qcow2", _config(tmp_path))
    assert open(f"{out}/argv").read().split("\n")[:3] == ["--format", "qcow2", "-a"]


def test_a_volume_a_vm_here_uses_is_refused(tmp_path, domains, sysprep):
    out = sysprep()
    with pytest.raises(Conflict, match="disk of a VM"):
        seal.seal(LOCATION, domains, "raw", _config(tmp_path),
                  in_use={f"{domains['data']}/img/vol"})
    assert os.listdir(out) == []


def test_a_failure_reports_the_end_of_the_output(tmp_path, domains, sysprep):
    sysprep("seq 1 5000\necho 'virt-sysprep: error: no operating systems were found'\n"
            "exit 1")
    with pytest.raises(seal.SealFailed) as err:
        seal.seal(LOCATION, domains, "raw", _config(tmp_path))
    message = err.value.message
    assert message.endswith("virt-sysprep: error: no operating systems were found")
    assert "(exit 1)" in message and len(message) < seal.MAX_OUTPUT + 200
    assert err.value.http_status == 502


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(line for line in status if line.startswith("State:")).split()[1] \
                not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_the_timeout_kills_virt_sysprep_and_its_qemu(tmp_path, domains, sysprep):
    out = sysprep(f"sleep 300 &\necho $! > {tmp_path}/child\nwait")
    with pytest.raises(seal.SealFailed, match="did not finish within 0.5 s"):
        seal.seal(LOCATION, domains, "raw", _config(tmp_path, timeout_s=0.5))
    assert os.path.exists(f"{out}/argv")
    assert not _alive(int((tmp_path / "child").read_text()))


def test_an_abort_stops_the_run(tmp_path, domains, sysprep):
    sysprep(f"sleep 300 &\necho $! > {tmp_path}/child\nwait")
    abort = threading.Event()
    abort.set()
    with pytest.raises(KestrelError, match="aborted"):
        seal.seal(LOCATION, domains, "raw", _config(tmp_path), abort=abort)


def test_a_host_without_virt_sysprep_says_what_to_install(tmp_path, domains, monkeypatch):
    monkeypatch.setattr(seal, "VIRT_SYSPREP", str(tmp_path / "absent"))
    with pytest.raises(seal.SealFailed, match="guestfs-tools"):
        seal.seal(LOCATION, domains, "raw", _config(tmp_path))


def test_agent_conf_seal_section():
    cfg = config.loads("[seal]\nappliance = /srv/app\ntcg = yes\ntimeout = 600\n")
    assert cfg.seal == SealConfig(appliance="/srv/app", tcg=True, timeout_s=600.0)
    assert config.loads("").seal == SealConfig()
    kernel = config.loads("[seal]\nkernel = /k/vmlinuz\nmodules = /k/modules/6.1\n").seal
    assert (kernel.kernel, kernel.modules) == ("/k/vmlinuz", "/k/modules/6.1")


@pytest.mark.parametrize("text, key, reason", [
    ("appliance = app", "appliance", "not an absolute path"),
    ("kernel = /k/vmlinuz", "modules", "go together"),
    ("modules = /k/m", "kernel", "go together"),
    ("appliance = /a\nkernel = /k\nmodules = /m", "appliance", "not both"),
    ("tcg = maybe", "tcg", "not a boolean"),
    ("timeout = 1", "timeout", "from 10 to 86400"),
    ("timeout = soon", "timeout", "from 10 to 86400"),
    ("cache_dir =", "cache_dir", "must not be empty"),
    ("path = /x", "path", "unknown key"),
])
def test_agent_conf_seal_errors_name_the_key(text, key, reason):
    with pytest.raises(InvalidSpec) as err:
        config.loads(f"[seal]\n{text}\n", "agent.conf")
    assert err.value.field == f"agent.conf [seal] {key}"
    assert reason in err.value.reason


class _Hypervisor:
    def disks_in_use(self):
        return set()


def test_the_api_route_validates_then_seals_in_a_job(tmp_path, domains, sysprep):
    out = sysprep()
    cfg = config.AgentConfig(name="h", address="a", port=1, libvirt_uri="x", ca="", cert="",
                             key="", storage_domains=domains, seal=_config(tmp_path))
    api = Api(cfg, hypervisor_factory=lambda _c: _Hypervisor())

    def post(body):
        return api.handle("POST", "/api/v1/volumes/seal", {}, json.dumps(body).encode())
    volume = {"domain": "data", "image": "img", "volume": "vol", "format": "raw"}
    status, answer = post({"volume": volume, "hostname": "bad host"})
    assert (status, answer["error"]["details"]["field"]) == (400, "hostname")
    status, answer = post({"volume": {**volume, "format": "vmdk"}})
    assert (status, answer["error"]["details"]["field"]) == (400, "volume.format")
    status, answer = post({"volume": {"domain": "data", "image": "img"}})
    assert (status, answer["error"]["details"]["field"]) == (400, "volume.volume")
    assert os.listdir(out) == []
    status, answer = post({"volume": volume, "hostname": "tmpl"})
    assert status == 200
    job = api.jobs.get(answer["job"])
    assert job.finished.wait(30)
    assert (job.kind, job.status, job.result["hostname"]) == ("seal", "succeeded", "tmpl")


@pytest.mark.parametrize("tcg, appliance", [(False, ""), (True, "/srv/guestfs")])
def test_the_host_roles_agent_conf_has_a_seal_section_the_agent_reads(tcg, appliance):
    import jinja2
    import yaml

    role = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "host")
    with open(os.path.join(role, "defaults", "main.yml")) as handle:
        defaults = yaml.safe_load(handle)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(role, "templates")),
                             trim_blocks=True)
    env.filters["bool"] = bool
    text = env.get_template("agent.conf.j2").render(
        {**defaults, "ansible_managed": "test", "kestrel_host_name": "h1",
         "kestrel_host_address": "10.0.0.1", "kestrel_host_seal_tcg": tcg,
         "kestrel_host_seal_appliance": appliance})
    assert config.loads(text).seal == SealConfig(appliance=appliance, tcg=tcg)
