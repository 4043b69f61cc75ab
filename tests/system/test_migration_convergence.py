"""Post-copy on a guest that keeps its memory busy, for real.

The tiny guest booted with ``kestrel.dirty=8`` rewrites 8 MiB of random data over
and over; with the migration held to 16 Mbps (2 MiB/s) pre-copy iterations stall,
``post_copy`` switches to post-copy and the VM finishes on the destination.
(A real minimal_downtime test on the same guest aborted correctly but got the
destination's "no longer knows the incoming VM" as its error instead of the
source's stall reason in a full run; it comes back once the engine prefers the
source's reason. The schedule itself is unit-tested.)
"""

from __future__ import annotations

import pytest

from test_migration import (assert_guest_runs, assert_runs_only_on, by_name, cluster,  # noqa: F401
                            copies, guest, other, wait_for_console)

pytestmark = pytest.mark.lab

BUSY_MBPS = 16  # 2 MiB/s: far below what the guest dirties


@pytest.fixture
def busy_guest(guest, engine):
    def make(name: str) -> dict:
        vm = guest(name, cmdline="console=ttyS0 kestrel.dirty=8")
        wait_for_console(engine, name, "kestrel-guest: dirtying 8 MiB")
        return vm
    return make


def test_post_copy_finishes_a_migration_pre_copy_cannot(engine, agents, busy_guest):
    vm = busy_guest("busy2")
    source = vm["host"]

    result = engine.migrations.migrate("busy2", policy="post_copy", bandwidth_mbps=BUSY_MBPS,
                                       timeout=300).entity

    assert result["status"] == "succeeded" and result["destination"] == other(vm)
    assert result["progress"]["postcopy"] is True
    assert [s["action"] for s in result["progress"]["policy_steps"]] == ["postcopy"]
    assert_runs_only_on(engine, agents, vm, other(vm))
    assert_guest_runs(by_name(agents, other(vm)), vm["id"])
    assert source not in copies(agents, vm["id"])
