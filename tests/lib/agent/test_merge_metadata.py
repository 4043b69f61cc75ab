"""A live merge ends by handing the engine's <kestrel:vm> element for the new chain to
virDomainSetMetadata; on libvirt's own conf code (the test driver) the element, written
with its namespace as the engine renders it, must land on the live domain."""

import xml.etree.ElementTree as ET
from types import SimpleNamespace

import libvirt
import pytest

from engine_lib.agent import merges
from engine_lib.protocol import metadata

ELEMENT = (f"<kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>"
           "<kestrel:cluster>c1</kestrel:cluster><kestrel:volume alias='ua-d1' disk='root' "
           "domain='data' image='i' volume='base' format='qcow2' size_mib='64'/></kestrel:vm>")
DOMAIN = """<domain type='test'><name>merged</name><memory>65536</memory>
  <os><type>hvm</type></os><devices><disk type='file' device='disk'>
  <source file='/srv/data/i/base'/><target dev='vda' bus='virtio'/>
  <alias name='ua-d1'/></disk></devices></domain>"""


@pytest.fixture
def dom():
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    yield conn.createXML(DOMAIN, 0)
    conn.close()


def test_a_merge_already_done_sets_the_chains_metadata_on_the_live_domain(dom):
    job = SimpleNamespace(phase="", data={}, cleanups=[], check=lambda: None)
    plan = {"dom": dom, "target": "vda", "alias": "ua-d1", "base": "/srv/data/i/base",
            "top": "/srv/data/i/top", "active": True, "bandwidth": 0, "metadata": ELEMENT}
    result = merges._live(job, plan)
    assert result["chain"] == ["/srv/data/i/base"] and job.phase == "metadata"
    live = metadata.read(ET.fromstring(dom.XMLDesc(0)))
    assert live.cluster == "c1" and [v.volume for v in live.volumes] == ["base"]
