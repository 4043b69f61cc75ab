"""The engine's <kestrel:vm> element for a new chain reaches a live domain through
virDomainSetMetadata (libvirt's test driver, the same conf code as QEMU's): libvirt
refuses an element that declares our namespace itself, which is how the engine writes it."""

import xml.etree.ElementTree as ET

import libvirt
import pytest

from engine_lib.agent import snapshots
from engine_lib.protocol import metadata

NS = metadata.NAMESPACE
ELEMENT = (f"<kestrel:vm xmlns:kestrel='{NS}'><kestrel:cluster>c1</kestrel:cluster>"
           "<kestrel:volume alias='ua-1' disk='root' domain='data' image='i' volume='top' "
           "format='qcow2' size_mib='64' parent='i/base' parent-format='raw'/>"
           "<kestrel:volume alias='' disk='root' domain='data' image='i' volume='base' "
           "format='raw' size_mib='64'/></kestrel:vm>")


@pytest.fixture
def dom():
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    yield conn.lookupByName("test")
    conn.close()


def test_a_snapshots_chain_metadata_is_set_on_the_live_domain_as_the_engine_wrote_it(dom):
    assert snapshots._set_metadata(dom, "vm1", ELEMENT) is True
    live = metadata.read(ET.fromstring(dom.XMLDesc(0)))
    assert live.cluster == "c1"
    assert [(v.alias, v.volume, v.parent) for v in live.volumes] == [
        ("ua-1", "top", "i/base"), ("", "base", "")]


def test_the_element_for_libvirt_keeps_every_attribute_and_drops_only_the_namespace():
    bare = ET.fromstring(metadata.for_set_metadata(ELEMENT))
    assert [node.tag for node in bare.iter()] == ["vm", "cluster", "volume", "volume"]
    assert bare[1].attrib == ET.fromstring(ELEMENT)[1].attrib
