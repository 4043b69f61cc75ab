"""A host's address is an IP address or a DNS name, refused before any agent is asked."""

from __future__ import annotations

import pytest

from engine_lib.protocol.errors import InvalidSpec


@pytest.mark.parametrize("address", ["h\u00e9\x9d.example", "a b", "-leading.example",
                                     "h1/../x", "1.2.3.4:80", "x" * 300])
def test_an_address_that_is_no_host_name_or_ip_is_refused_naming_the_field(engine, address):
    engine.clusters.ensure("c1")
    with pytest.raises(InvalidSpec) as err:
        engine.hosts.ensure("h1", address=address, cluster="c1")
    assert err.value.field == "address"
    assert engine.hosts.info() == []


@pytest.mark.parametrize("address", ["10.0.0.1", "fd00::1", "h1", "node-1.lab.example"])
def test_ip_addresses_and_host_names_are_taken(engine, address):
    engine.clusters.ensure("c1")
    assert engine.hosts.ensure("h1", address=address, cluster="c1").entity["address"] == address
