"""Offline merge (deleting a stopped VM's snapshot) with the real qemu-img: commit
through the explicit chain, relative rebase of the child, safe to run again."""

from __future__ import annotations

import json
import subprocess

import pytest

from engine_lib.agent import merges
from engine_lib.agent.jobs import Jobs
from engine_lib.protocol.errors import Conflict, InvalidSpec

IMG = "img"


@pytest.fixture
def domain(tmp_path):
    """R (raw) <- A <- B <- T, each overlay with a relative backing name; each layer
    writes its own 64 KiB pattern at its own offset, A also overwrites R's."""
    root = tmp_path / "data"
    (root / IMG).mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(root / IMG / "R"), "8M"],
                   check=True)
    parent, fmt = "R", "raw"
    for name in ("A", "B", "T"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b",
                        f"../{IMG}/{parent}", "-F", fmt, str(root / IMG / name), "8M"],
                       check=True)
        parent, fmt = name, "qcow2"
    for name, pattern, offset in (("R", 0x11, 0), ("A", 0x22, 0), ("A", 0x33, 64),
                                  ("B", 0x44, 128), ("T", 0x55, 192)):
        _io(root / IMG / name, f"write -P {pattern} {offset}k 64k",
            "raw" if name == "R" else "qcow2")
    return root


def _io(path, command, fmt="qcow2"):
    subprocess.run(["qemu-io", "-f", fmt, "-c", command, str(path)], check=True,
                   capture_output=True)


def _reads(path, expected: dict[int, int]) -> None:
    """Reading through ``path``'s chain gives each pattern at its offset (KiB)."""
    for offset, pattern in expected.items():
        _io(path, f"read -P {pattern} {offset}k 64k")


def _backing(path) -> str:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         capture_output=True, check=True, text=True).stdout
    return json.loads(out).get("backing-filename", "")


def _vol(name, fmt="qcow2"):
    return {"domain": "data", "image": IMG, "volume": name, "format": fmt}


def _merge(domain, body, in_use=()):
    jobs = Jobs()
    answer = merges.start_offline(jobs, {"data": str(domain)}, set(in_use), body)
    job = jobs.get(answer["job"])
    assert job.finished.wait(60)
    return job.to_dict()


ALL = {0: 0x22, 64: 0x33, 128: 0x44, 192: 0x55}


def test_a_middle_volume_merges_into_its_base_and_the_child_is_rebased(domain):
    body = {"base": _vol("A"), "top": _vol("B"), "child": _vol("T"),
            "chain": [_vol("R", "raw")]}
    done = _merge(domain, body)
    assert done["status"] == "succeeded", done
    assert done["result"] == {"committed": True, "child_backing": f"../{IMG}/A"}
    assert _backing(domain / IMG / "T") == f"../{IMG}/A"
    _reads(domain / IMG / "T", ALL)
    # A crash before the engine removed B: running it again changes nothing.
    assert _merge(domain, body)["status"] == "succeeded"
    (domain / IMG / "B").unlink()  # and after it removed B (rows and file done)
    again = _merge(domain, body)
    assert again["status"] == "succeeded" and again["result"]["committed"] is False
    _reads(domain / IMG / "T", ALL)


def test_the_first_overlay_merges_into_a_raw_base(domain):
    body = {"base": _vol("R", "raw"), "top": _vol("A"), "child": _vol("B"), "chain": []}
    assert _merge(domain, body)["status"] == "succeeded"
    assert _backing(domain / IMG / "B") == f"../{IMG}/R"
    _reads(domain / IMG / "T", ALL)
    _io(domain / IMG / "R", "read -P 0x22 0k 64k", "raw")


def test_the_top_merges_with_no_child(domain):
    body = {"base": _vol("B"), "top": _vol("T"), "child": None,
            "chain": [_vol("A"), _vol("R", "raw")]}
    assert _merge(domain, body)["status"] == "succeeded"
    _reads(domain / IMG / "B", ALL)


def test_a_header_is_never_followed(domain):
    """B's header names another backing: the commit still goes through the chain given."""
    subprocess.run(["qemu-img", "rebase", "-u", "-b", "/etc/hostname", "-F", "raw",
                    str(domain / IMG / "B")], check=True)
    body = {"base": _vol("B"), "top": _vol("T"), "child": None,
            "chain": [_vol("A"), _vol("R", "raw")]}
    assert _merge(domain, body)["status"] == "succeeded"
    _io(domain / IMG / "B", "read -P 0x55 192k 64k")


def test_bad_requests_name_their_field_and_change_nothing(domain):
    before = {p.name: p.read_bytes() for p in (domain / IMG).iterdir()}
    jobs, domains = Jobs(), {"data": str(domain)}
    cases = [
        ({"base": _vol("A"), "top": {**_vol("B"), "format": "vmdk"}}, "top.format"),
        ({"base": _vol("A"), "top": _vol("B"), "chain": [{"image": IMG}]}, "chain[0].domain"),
        ({"base": _vol("A"), "top": {**_vol("B"), "domain": "other"}}, "top.domain"),
        ({"base": _vol("A"), "top": {**_vol("B"), "volume": ".."}}, "top.volume"),
        ({"base": _vol("A"), "top": _vol("B"), "child": {**_vol("T"), "extra": 1}}, "child"),
    ]
    for body, field in cases:
        with pytest.raises(InvalidSpec) as caught:
            merges.start_offline(jobs, domains, set(), body)
        assert caught.value.details["field"] == field, (body, caught.value)
    with pytest.raises(Conflict, match="merge it live"):
        merges.start_offline(jobs, domains, {str(domain / IMG / "T")},
                             {"base": _vol("B"), "top": _vol("T")})
    gone = _merge(domain, {"base": _vol("A"), "top": _vol("nope"), "child": _vol("T")})
    assert gone["status"] == "failed" and gone["error"]["details"]["field"] == "top"
    assert {p.name: p.read_bytes() for p in (domain / IMG).iterdir()} == before
