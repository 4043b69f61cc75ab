"""Paged, filtered lists in SQL (services.listing and the services' page methods)."""

import contextlib
import re

import pytest
from sqlalchemy import event, select
from vm_rows import copy_vm

from engine_lib.model import AuditEntry, Template, Vm, Volume
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services import actor, listing

VM = {"name": "base", "cluster": "c1", "memory": "256MiB",
      "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data"}],
      "nics": [{"name": "nic1", "network": "kestrelmgmt"}]}


@pytest.fixture
def vms(engine, cluster):
    """base (made by vms.ensure) and 30 copies, vm-00000 .. vm-00029."""
    engine.vms.ensure(VM)
    return copy_vm(engine, "base", 30)


@contextlib.contextmanager
def statements(engine):
    """The SQL statements run meanwhile."""
    seen: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        seen.append(statement)

    event.listen(engine.store.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine.store.engine, "before_cursor_execute", count)


def add_rows(engine, *rows):
    with engine.store.transaction() as session:
        session.add_all(rows)


def names(page):
    return [item.get("name") or item.get("entity_name") for item in page["items"]]


# -- pages ---------------------------------------------------------------------------------

def test_pages_walk_the_names_in_order_and_count_them_all(engine, vms):
    first = engine.vms.page(limit=10)
    assert first["total"] == 31 and first["offset"] == 0 and first["limit"] == 10
    assert names(first) == ["base", *vms[:9]]
    walked = [name for offset in range(0, 31, 10)
              for name in names(engine.vms.page(offset=offset, limit=10))]
    assert walked == ["base", *vms]
    assert engine.vms.page(offset=31) == {"items": [], "total": 31, "offset": 31, "limit": 100}
    # A page's VM is what info says about it.
    assert engine.vms.page(name="vm-00007")["items"] == engine.vms.info("vm-00007")


def test_bad_bounds_name_the_field(engine, vms):
    for bounds, field in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
                          ({"limit": "10"}, "limit"), ({"limit": True}, "limit"),
                          ({"offset": -1}, "offset"), ({"offset": 2**63}, "offset"),
                          ({"offset": 1.5}, "offset")):
        with pytest.raises(InvalidSpec) as err:
            engine.vms.page(**bounds)
        assert err.value.details["field"] == field
    assert len(engine.vms.page(limit=1000)["items"]) == 31
    assert engine.vms.page(offset=2**31 - 1)["items"] == []


# -- names: exact or a glob with *, everything else literal ----------------------------------

GLOBS = {
    "a%b": ["a%b"], "a_b": ["a_b"], "a\\b": ["a\\b"], "a[b]": ["a[b]"], "a?b": ["a?b"],
    "a*b": ["a%b", "a?b", "a\\b", "a_b", "axb"], "a_*": ["a_b"], "a%*": ["a%b"],
    "a\\*": ["a\\b"], "a[*": ["a[b]"], "a?*": ["a?b"], "*]": ["a[b]"], "W*": ["Web"],
    "w*": ["web"], "web": ["web"], "WEB": [],
    "*": ["Web", "a%b", "a?b", "a[b]", "a\\b", "a_b", "axb", "web"],
    "**b": ["Web", "a%b", "a?b", "a\\b", "a_b", "axb", "web"],
    "x' OR '1'='1": [], "*' OR 1=1 --": [],
}


def test_a_glob_has_one_wildcard_and_counts_case(engine):
    add_rows(engine, *[AuditEntry(entity_type="vm", entity_name=name, message="m")
                       for name in ("a%b", "a_b", "axb", "a\\b", "a[b]", "a?b", "Web", "web")])
    found = {pattern: sorted(names(engine.events.page(entity_name=pattern)))
             for pattern in GLOBS}
    assert found == GLOBS


def test_vm_names_glob(engine, cluster):
    engine.vms.ensure({**VM, "name": "db_1"})
    copy_vm(engine, "db_1", 2, prefix="dbx")
    assert names(engine.vms.page(name="db_*")) == ["db_1"]
    assert names(engine.vms.page(name="db*")) == ["db_1", "dbx00000", "dbx00001"]
    assert engine.vms.page(name="*1")["total"] == 2


def test_hostile_names_are_refused_naming_the_field(engine, vms):
    for pattern, reason in (("a" * 129, "longer than 128"), ("a\x00b", "U+0000"),
                            ("a\nb", "U+000A"), ("\ud800*", "U+D800"), (7, "must be a string")):
        for call, field in ((engine.vms.page, "name"), (engine.events.page, "entity_name")):
            with pytest.raises(InvalidSpec, match=re.escape(reason)) as err:
                call(**{field: pattern})
            assert err.value.details["field"] == field
    assert engine.vms.page(name="a" * 128)["total"] == 0


# -- filters -------------------------------------------------------------------------------

def test_vm_filters(engine, agents, vms):
    engine.clusters.ensure("c2", virt_type="qemu")
    engine.vms.ensure({**VM, "name": "other", "cluster": "c2"})
    engine.hosts.ensure("h1", address="10.0.0.1", cluster="c1")
    engine.vms.ensure({**VM, "name": "vm-up"}, state="running")
    assert names(engine.vms.page(cluster="c2")) == ["other"]
    assert engine.vms.page(cluster="c1")["total"] == 32
    assert names(engine.vms.page(host="h1")) == ["vm-up"]
    assert names(engine.vms.page(status="Up")) == ["vm-up"]
    assert names(engine.vms.page(status="Up", cluster="c2")) == []
    assert engine.vms.page(status="Down", name="vm-*")["total"] == 30
    # An unknown cluster or host is an empty page: nothing learnt about what exists.
    assert engine.vms.page(cluster="nope")["total"] == 0
    assert engine.vms.page(host="nope")["total"] == 0
    with pytest.raises(InvalidSpec) as err:
        engine.vms.page(status="up")
    assert err.value.details["field"] == "status" and "Down" in err.value.message
    with pytest.raises(InvalidSpec) as err:
        engine.vms.page(cluster="c" * 65)
    assert err.value.details["field"] == "cluster"


def test_visible_is_anded_in(engine, vms):
    with engine.store.transaction(commit=False) as session:
        page = listing.page(session, select(Vm).order_by(Vm.name), to_dict=lambda vm: vm.name,
                            offset=0, limit=5, name="vm-*", name_column=Vm.name,
                            visible=Vm.name.in_(["base", "vm-00003", "vm-00004"]))
    assert page == {"items": ["vm-00003", "vm-00004"], "total": 2, "offset": 0, "limit": 5}


def test_a_callers_clause_narrows_a_services_page(engine, vms):
    page = engine.vms.page(visible=Vm.name.in_(["base", "vm-00001"]), name="vm-*")
    assert names(page) == ["vm-00001"] and page["total"] == 1


def test_an_api_user_pages_through_what_it_may_read(engine, vms):
    """access.visible is ANDed in by the service itself, whoever calls it."""
    engine.clusters.ensure("c2", virt_type="qemu")
    engine.vms.ensure({**VM, "name": "other", "cluster": "c2"})
    engine.users.ensure("carol", password="a-long-password")
    engine.permissions.ensure(role="ReadOnly", user="carol", object_type="cluster",
                              object_name="c2")
    engine.permissions.ensure(role="UserVmManager", user="carol", object_type="vm",
                              object_name="vm-00004")
    carol = actor.Actor("carol", user_id=engine.users.info("carol")[0]["id"])
    with actor.acting_as(carol):
        assert names(engine.vms.page()) == ["other", "vm-00004"]
        assert engine.vms.page(cluster="c1")["total"] == 1
        assert names(engine.clusters.page()) == ["c2"]
    with actor.acting_as(actor.Actor("nobody", user_id="no-such-user")):
        assert engine.vms.page() == {"items": [], "total": 0, "offset": 0, "limit": 100}


def test_a_list_without_the_column_refuses_its_filter(engine):
    with engine.store.transaction(commit=False) as session:
        for kwargs, field in (({"name": "x"}, "name"), ({"status": "Up"}, "status")):
            with pytest.raises(InvalidSpec) as err:
                listing.page(session, select(Vm), to_dict=str, offset=0, limit=1, **kwargs)
            assert err.value.details["field"] == field
    for call in (engine.clusters.page, engine.storage_domains.page, engine.events.page):
        with pytest.raises(InvalidSpec) as err:
            call(status="Up")
        assert err.value.details["field"] == "status"


def test_hosts_and_clusters(engine, cluster):
    engine.clusters.ensure("c2", virt_type="qemu")
    for n in range(3):
        engine.hosts.ensure(f"h{n}", address=f"10.0.0.{n + 1}", cluster="c1" if n else "c2")
    assert names(engine.hosts.page(cluster="c1")) == ["h1", "h2"]
    assert engine.hosts.page(cluster="c1")["items"] == engine.hosts.info(cluster="c1")
    assert names(engine.hosts.page(status="Up", limit=1, offset=1)) == ["h1"]
    assert engine.hosts.page(status="Maintenance")["total"] == 0
    with pytest.raises(InvalidSpec, match="status"):
        engine.hosts.page(status="Down")
    assert engine.clusters.page(name="c*", limit=1) == {
        "items": [engine.clusters.get("c1")], "total": 2, "offset": 0, "limit": 1}


def test_templates_with_the_vms_made_from_them(engine, vms):
    with engine.store.transaction() as session:
        cluster_id = session.scalars(select(Vm.cluster_id)).first()
        made = [Template(name=name, version_number=number, cluster_id=cluster_id,
                         spec={"memory_mib": 256}, status=status)
                for name, number, status in (("t1", 1, "ok"), ("t1", 2, "ok"), ("t2", 1, "locked"))]
        session.add_all(made)
        session.flush()
        for vm in session.scalars(select(Vm).where(Vm.name.in_(vms[:3]))):
            vm.template_id = made[1].id
    page = engine.templates.page(name="t1")
    assert [(t["name"], t["version"]["number"], t["vms"]) for t in page["items"]] == [
        ("t1", 1, []), ("t1", 2, vms[:3])]
    assert page["items"] == engine.templates.info(name="t1")
    assert names(engine.templates.page(version=1)) == ["t1", "t2"]
    assert names(engine.templates.page(status="locked")) == ["t2"]
    with pytest.raises(InvalidSpec) as err:
        engine.templates.page(version=0)
    assert err.value.details["field"] == "version"


def test_storage_domains_with_their_hosts(engine, cluster):
    engine.clusters.ensure("c2", virt_type="qemu")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster="c1")
    engine.storage_domains.ensure("data", path="/srv/data", clusters=["c1"])
    engine.storage_domains.ensure("iso", path="/srv/iso", clusters=["c1", "c2"])
    engine.storage_domains.ensure("spare", path="/srv/spare")
    page = engine.storage_domains.page()
    assert page["items"] == engine.storage_domains.info() and page["total"] == 3
    assert list(page["items"][0]["hosts"]) == ["h1"]
    assert names(engine.storage_domains.page(cluster="c2")) == ["iso"]
    assert names(engine.storage_domains.page(name="*a*")) == ["data", "spare"]


def test_floating_disks(engine):
    add_rows(engine, *[
        Volume(image_id=f"i{n}", storage_domain="data", name=name, content_type=kind,
               status=status, template_id=None)
        for n, (name, kind, status) in enumerate((
            ("disk-a", "data", "ok"), ("disk-b", "data", "locked"), ("cd", "iso", "ok"),
            ("", "data", "ok")))])  # a VM's disk volume: not floating
    assert names(engine.images.page()) == ["cd", "disk-a", "disk-b"]
    assert engine.images.page()["items"] == engine.images.list()
    assert names(engine.images.page(content_type="iso")) == ["cd"]
    assert names(engine.images.page(status="locked", name="disk*")) == ["disk-b"]
    for kwargs, field in (({"content_type": "raw"}, "content_type"), ({"status": "x"}, "status")):
        with pytest.raises(InvalidSpec) as err:
            engine.images.page(**kwargs)
        assert err.value.details["field"] == field


def test_events_newest_first_by_who_and_what(engine):
    add_rows(engine, *[AuditEntry(entity_type=kind, entity_name=name, message=str(n),
                                  severity=severity, user_name=user)
                       for n, (kind, name, severity, user) in enumerate((
                           ("vm", "vm1", "info", "alice"), ("host", "h1", "warning", "engine"),
                           ("vm", "vm2", "error", "alice"), ("vm", "vm1", "info", "bob")))])
    page = engine.events.page()
    assert [e["message"] for e in page["items"]] == ["3", "2", "1", "0"]
    assert page["items"][0]["user"] == "bob"
    assert [e["message"] for e in engine.events.page(user="alice")["items"]] == ["2", "0"]
    assert [e["message"] for e in engine.events.page(entity_type="vm", entity_name="vm1",
                                                      limit=1)["items"]] == ["3"]
    assert [e["message"] for e in engine.events.page(severity="warning")["items"]] == ["1"]
    assert engine.events.page(offset=1, limit=2)["total"] == 4
    first = page["items"][-1]["id"]
    assert [e["message"] for e in engine.events.page(after_id=first, name="vm*")["items"]] \
        == ["3", "2"]
    with pytest.raises(InvalidSpec) as err:
        engine.events.page(after_id=-1)
    assert err.value.details["field"] == "after_id"
    with pytest.raises(InvalidSpec) as err:
        engine.events.page(severity="fatal")
    assert err.value.details["field"] == "severity"


# -- no query per row ----------------------------------------------------------------------

def test_a_page_of_vms_costs_the_same_queries_for_10_or_100(engine, cluster):
    """vm_dict reads the VM's cluster, host, template and devices: loaded for the whole
    page at once, not one query per VM (info, which modules call, too)."""
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.vms.ensure(VM, state="running")
    copy_vm(engine, "base", 99)
    with engine.store.transaction() as session:  # each copy runs on h1, as base does
        host_id = session.scalars(select(Vm.run_on_host_id).where(Vm.name == "base")).one()
        for vm in session.scalars(select(Vm)):
            vm.run_on_host_id = host_id
    counts = {}
    for limit in (10, 100):
        with statements(engine) as seen:
            assert len(engine.vms.page(limit=limit)["items"]) == limit
        counts[limit] = len(seen)
    assert counts[10] == counts[100] <= 8, counts
    with statements(engine) as seen:
        assert len(engine.vms.info()) == 100
    assert len(seen) <= 8, len(seen)
    with statements(engine) as seen:
        assert len(engine.hosts.page()["items"]) == 1
    assert len(seen) <= 5
