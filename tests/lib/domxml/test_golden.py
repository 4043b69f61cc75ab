"""Golden domain XML: every case renders to its recorded XML and is valid for libvirt.

Cases live in golden/cases.yaml, expected output in golden/<case>.xml. The
comparison is on canonical XML (C14N, blank text dropped), so attribute order
and indentation do not matter but every element, attribute and text does.
KESTREL_REGENERATE_GOLDEN=1 rewrites the .xml files from the current code.
Each case is also defined on libvirt's test driver with
VIR_DOMAIN_DEFINE_VALIDATE (RelaxNG), as the engine emits it (placeholders) and
as a host would run it (placeholders resolved by the agent's resolver).
"""

from __future__ import annotations

import os
from pathlib import Path

import libvirt
import pytest
import yaml
from lxml import etree

from engine_lib.agent import paths
from engine_lib.agent.domxml import resolve
from engine_lib.domxml import render
from engine_lib.services import vm_config
from engine_lib.services.previews import render_spec
from engine_lib.spec import VM_KEYS, normalize_vm

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = yaml.safe_load((GOLDEN / "cases.yaml").read_text())
REGENERATE = os.environ.get("KESTREL_REGENERATE_GOLDEN") == "1"
ROOTS = {kind: f"/var/lib/kestrel/{kind}" for kind in ("channels", "payload", "console", "nvram")}


class _AnyDomain(dict):
    """Every storage domain a case names is mounted under /rhev-like fake roots."""

    def __missing__(self, name: str) -> str:
        return f"/srv/storage/{name}"


def canonical(xml: str) -> str:
    parser = etree.XMLParser(remove_blank_text=True)
    root = etree.fromstring(xml.encode(), parser)
    return etree.tostring(root, method="c14n").decode()


def pretty(xml: str) -> str:
    """Canonical, then indented: what a person reads in a failing diff."""
    root = etree.fromstring(canonical(xml).encode())
    etree.indent(root, space="  ")
    return etree.tostring(root, encoding="unicode")


@pytest.fixture(scope="module")
def test_driver():
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


def render_case(case: str) -> str:
    """A case's XML; its ``chains`` (disk name -> backing volumes, nearest first) stand in
    for the volume rows a stored VM's thin disks carry (services.volumes)."""
    chains = CASES[case].get("chains")
    if not chains:
        return render_spec(CASES[case]["spec"], CASES[case].get("virt_type", "kvm"))
    vm = vm_config.build_offline(normalize_vm(CASES[case]["spec"]),
                                 CASES[case].get("virt_type", "kvm"))
    for device in vm.devices:
        if device.name in chains:
            device.spec = {**device.spec, "chain": chains[device.name]}
    return render(vm)


def define(conn, xml: str) -> None:
    conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE).undefine()


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_output(case):
    xml = render_case(case)
    path = GOLDEN / f"{case}.xml"
    if REGENERATE:
        path.write_text(xml)
    assert path.exists(), f"no golden file for {case}; run with KESTREL_REGENERATE_GOLDEN=1"
    assert pretty(xml) == pretty(path.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_case_is_valid_for_libvirt_before_and_after_resolution(case, test_driver,
                                                                      monkeypatch):
    # The LUNs of the cases are not devices of this machine (tests/lib/agent checks those).
    monkeypatch.setattr(paths, "block_device", lambda path, field: path)
    xml = render_case(case)
    define(test_driver, xml)
    host = resolve(xml, ROOTS, _AnyDomain())
    assert "/kestrel-placeholder/" not in host.xml.split("<metadata>")[0] + \
        host.xml.split("</metadata>")[-1]
    define(test_driver, host.xml)


def test_rendering_a_spec_twice_gives_the_same_bytes():
    assert render_case("everything") == render_case("everything")


def test_every_spec_key_is_exercised_by_some_golden_case():
    used = {key for case in CASES.values() for key in case["spec"]}
    assert set(VM_KEYS) - used == set()


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25
