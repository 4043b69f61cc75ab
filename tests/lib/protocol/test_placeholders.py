import pytest

from engine_lib.protocol import placeholders
from engine_lib.protocol.errors import InvalidSpec

ROOTS = {"channels": "/var/lib/kestrel/channels", "payload": "/var/lib/kestrel/payload",
         "console": "/var/log/kestrel/console", "nvram": "/var/lib/kestrel/nvram"}
DOMAINS = {"data": "/srv/data"}


def test_placeholders_are_absolute_paths_under_the_reserved_prefix():
    for value in (placeholders.storage("data", "img/vol"), placeholders.channel("id", "qga"),
                  placeholders.payload("id"), placeholders.console_log("id"),
                  placeholders.nvram("id")):
        assert value.startswith(placeholders.PREFIX + "/")


def test_resolution_maps_each_kind_to_the_hosts_directories():
    assert placeholders.resolve(placeholders.storage("data", "img/vol"), ROOTS, DOMAINS) \
        == "/srv/data/img/vol"
    assert placeholders.resolve(placeholders.console_log("v1"), ROOTS, DOMAINS) \
        == "/var/log/kestrel/console/v1.log"


def test_an_unknown_storage_domain_names_itself():
    with pytest.raises(InvalidSpec, match="'iso' is not attached"):
        placeholders.resolve(placeholders.storage("iso", "x.iso"), ROOTS, DOMAINS)


@pytest.mark.parametrize("value", ["/kestrel-placeholder/storage/data/../../etc/passwd",
                                   "/kestrel-placeholder/other/x", "/etc/passwd",
                                   "/kestrel-placeholder/console/../x"])
def test_malformed_or_escaping_placeholders_are_refused(value):
    with pytest.raises(InvalidSpec):
        placeholders.resolve(value, ROOTS, DOMAINS)
