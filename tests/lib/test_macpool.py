"""MAC pools: only unicast, never the all-zero address; sizes without enumerating."""

import pytest

from engine_lib import macpool
from engine_lib.protocol.errors import InvalidSpec


@pytest.mark.parametrize(("ranges", "field", "words"), [
    (["00:00:00:00:00:00-00:00:00:00:00:ff"], "mac_pool[0]", "all-zero"),
    (["56:6f:4b:00:00:00-56:6f:4b:00:00:ff", "00:00:00:00:00:00-ff:ff:ff:ff:ff:ff"],
     "mac_pool[1]", "all-zero"),
    (["01:00:5e:00:00:00-01:00:5e:00:00:ff"], "mac_pool[0]", "multicast"),
    # Starts unicast, but its first octet runs through 57 (odd): multicast inside.
    (["56:ff:ff:ff:ff:00-58:00:00:00:00:00"], "mac_pool[0]", "multicast"),
    (["fe:00:00:00:00:00-ff:ff:ff:ff:ff:ff"], "mac_pool[0]", "broadcast"),
])
def test_pools_with_addresses_no_nic_may_use_are_refused(ranges, field, words):
    with pytest.raises(InvalidSpec, match=words) as info:
        macpool.normalize_ranges("mac_pool", ranges)
    assert info.value.field == field


def test_a_pool_of_2_to_the_40_is_sized_and_allocated_from_what_is_used():
    whole = ["02:00:00:00:00:00-02:ff:ff:ff:ff:ff", "02:00:00:00:00:00-02:00:00:00:ff:ff"]
    assert macpool.size(macpool.normalize_ranges("mac_pool", whole)) == 2 ** 40
    used = {f"02:00:00:00:{i >> 8:02x}:{i & 0xff:02x}" for i in range(5000)} | {"56:00:00:00:00:00"}
    assert macpool.allocate(whole, used) == "02:00:00:00:13:88"


def test_a_full_pool_says_how_big_it_is():
    pool = ["56:6f:4b:00:00:00-56:6f:4b:00:00:01"]
    assert macpool.allocate(pool, {"56:6f:4b:00:00:00"}) == "56:6f:4b:00:00:01"
    with pytest.raises(InvalidSpec, match=r"in use \(2 addresses\)"):
        macpool.allocate(pool, {"56:6f:4b:00:00:00", "56:6f:4b:00:00:01"})
