"""No user string breaks or injects into the domain XML (hypothesis).

Specs are generated with hostile text in every free-text field and arbitrary
values in structured ones. Each spec is either refused with InvalidSpec naming
a field the spec actually has, or renders to XML that libvirt's RelaxNG schema
accepts and that carries the text back unchanged.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services.previews import render_spec

HOSTILE = ["<", ">", "&", "'", '"', "]]>", "<!--", "&amp;", "\x00", "\x07", "\x1b", "\r", "\n",
           "\t", "é", "✓", "\U0001f600", "\ufffe", "\ud800", "${x}", "{{ x }}", "{% x %}"]
hostile_text = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=8)),
                        max_size=6).map("".join)
valid_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,14}", fullmatch=True)
# Mostly valid names, so most specs get as far as libvirt; sometimes hostile ones.
names = st.one_of(valid_names, valid_names, valid_names, hostile_text)
sizes = st.one_of(st.integers(-5, 5000), st.sampled_from(["512MiB", "1GiB", "0", "1.5GiB",
                                                          "-1GiB", "3 parsecs", "1KiB"]))

disk = st.fixed_dictionaries(
    {"name": names, "size": sizes, "storage_domain": names},
    optional={"interface": st.sampled_from(["virtio", "scsi", "sata", "ide", "<x>"]),
              "format": st.sampled_from(["qcow2", "raw", "vmdk"]),
              "serial": hostile_text, "boot_order": st.integers(-1, 4),
              "cache": st.sampled_from(["none", "writeback", "bogus"])})
nic = st.fixed_dictionaries(
    {"name": names, "network": names},
    optional={"mac": st.one_of(st.sampled_from(["56:6f:4b:00:00:10", "01:00:5e:00:00:01"]),
                               hostile_text),
              "model": st.sampled_from(["virtio", "e1000", "ne2k"]),
              "mtu": st.integers(0, 70000), "vlan": st.integers(0, 5000),
              "boot_order": st.integers(0, 4)})
specs = st.fixed_dictionaries(
    {"name": valid_names},
    optional={
        "description": hostile_text,
        "memory": sizes,
        "cmdline": hostile_text,
        "kernel": st.one_of(st.just("images:vmlinuz"), hostile_text),
        "cpu": st.fixed_dictionaries({}, optional={
            "sockets": st.integers(0, 4), "cores": st.integers(0, 4),
            "max_vcpus": st.integers(0, 20), "model": hostile_text,
            "mode": st.sampled_from(["host-model", "custom", "bogus"])}),
        "custom_properties": st.dictionaries(
            st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), hostile_text),
            hostile_text, max_size=3),
        "graphics": st.fixed_dictionaries({"type": st.sampled_from(["vnc", "spice"])},
                                          optional={"password": hostile_text,
                                                    "listen": st.sampled_from(["::1", "0.0.0.0",
                                                                               "x<y"])}),
        "cloud_init": st.fixed_dictionaries({}, optional={
            "user_data": hostile_text, "hostname": hostile_text,
            "ssh_keys": st.lists(st.one_of(hostile_text,
                                           hostile_text.map(lambda c: "ssh-ed25519 AAAA " + c)),
                                 max_size=2),
            "network_config": hostile_text}),
        "cdrom": st.one_of(st.just(""), hostile_text.map(lambda p: "isos:" + p)),
        "disks": st.lists(disk, max_size=3),
        "nics": st.lists(nic, max_size=3),
        "placement": st.fixed_dictionaries({"hosts": st.lists(names, max_size=2)}),
    })


@pytest.fixture(scope="module")
def test_driver():
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


# database=None: no .hypothesis directory in the checkout; failures print their example.
@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs)
def test_a_spec_is_refused_naming_its_field_or_valid_for_libvirt(spec, test_driver):
    try:
        xml = render_spec(spec)
    except InvalidSpec as err:
        root_key = err.field.split(".")[0].split("[")[0]
        assert root_key in spec, f"{err.message!r} names a field the spec does not have"
        assert err.field in err.message
        return
    root = ET.fromstring(xml)  # well-formed, one document
    assert root.findtext("name") == spec["name"]
    if spec.get("description"):
        # XML reads a line break written as CR LF or CR as LF, as libvirt will.
        expected = spec["description"].replace("\r\n", "\n").replace("\r", "\n")
        assert root.findtext("description") == expected
    test_driver.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE).undefine()
