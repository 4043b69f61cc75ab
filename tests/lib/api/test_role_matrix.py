"""Every built-in role against every operation of the served API, over TLS.

The expected answer is computed here, independently of the API's own catalog: from the
roles' permissions (engine_lib.aaa.roles), where each grant sits, and OPERATIONS below
(what each operation needs, on which object). Allowed: anything but 403. Denied: 403
whose body names the missing permission. An operation the OpenAPI document lists and
OPERATIONS does not fails the test: a new route needs its row here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import pytest
from api_fixtures import agents, api, connect  # noqa: F401

from engine_lib.aaa.roles import ROLES

# Objects of the fixture and what holds them: a grant on an object covers it and
# everything below it.
PARENT = {("vm", "vm1"): ("cluster", "c1"), ("host", "h1"): ("cluster", "c1"),
          ("cluster", "c1"): ("system", "")}
SYSTEM = ("system", "")
VM1 = ("vm", "vm1")
C1 = ("cluster", "c1")
H1 = ("host", "h1")
ANY_USER = None  # nothing beyond a valid token (own tokens, filtered lists, jobs)
PUBLIC = "public"  # no token at all


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    need: tuple[str, tuple[str, str]] | None | str  # (permission, object), ANY_USER or PUBLIC
    params: dict = field(default_factory=dict)
    body: dict | None = None


def _check(**params):
    return {"check_mode": "true", **params}


VM1_SPEC = {"name": "vm1", "cluster": "c1", "memory": "512MiB"}

# operationId -> one request and what it needs. Changes use check_mode where the route
# has it, so every principal sees the same objects.
OPERATIONS: dict[str, Case] = {
    "api.describe": Case("GET", "/", PUBLIC),
    "auth.login": Case("POST", "/auth/token", PUBLIC),  # a real user's password, below
    "auth.whoami": Case("GET", "/auth/whoami", ANY_USER),
    "jobs.info": Case("GET", "/jobs", ANY_USER),
    "jobs.get": Case("GET", "/jobs/no-such-job", ANY_USER),
    "jobs.cancel": Case("DELETE", "/jobs/no-such-job", ANY_USER),
    # Lists show what the caller may read: never refused.
    "clusters.info": Case("GET", "/clusters", ANY_USER),
    "clusters.get": Case("GET", "/clusters/c1", ("read", C1)),
    "clusters.ensure": Case("PUT", "/clusters/c1", ("cluster.edit", C1), _check(),
                            {"description": "matrix"}),
    "clusters.remove": Case("DELETE", "/clusters/c1", ("cluster.delete", C1), _check()),
    "clusters.scheduling_policies": Case("GET", "/scheduling_policies", ("read", SYSTEM)),
    "hosts.info": Case("GET", "/hosts", ANY_USER),
    "hosts.ensure": Case("PUT", "/hosts/h1", ("host.edit", H1), _check(),
                         {"address": "10.0.0.1", "cluster": "c1"}),
    "hosts.remove": Case("DELETE", "/hosts/h1", ("host.delete", H1), _check()),
    "hosts.maintenance": Case("POST", "/hosts/h1/maintenance", ("host.maintenance", H1),
                              _check(), {}),
    "hosts.activate": Case("POST", "/hosts/h1/activate", ("host.maintenance", H1), _check(),
                           {}),
    "hosts.reinstall": Case("POST", "/hosts/h1/reinstall", ("host.edit", H1), _check(), {}),
    "stats.host": Case("GET", "/hosts/h1/statistics", ("read", H1), {"period": "1h"}),
    "stats.vm": Case("GET", "/vms/vm1/statistics", ("read", VM1), {"period": "7d"}),
    "vms.info": Case("GET", "/vms", ANY_USER),
    # A changed configuration of a Down VM: vm.edit (the service decides, in the route).
    "vms.ensure": Case("PUT", "/vms/vm1", ("vm.edit", VM1), _check(),
                       {"spec": {**VM1_SPEC, "memory": "768MiB"}, "state": "stopped"}),
    "vms.domain_xml": Case("GET", "/vms/vm1/domain_xml", ("vm.console", VM1)),
    "vms.console": Case("GET", "/vms/vm1/console", ("vm.console", VM1)),
    "migrations.migrate": Case("POST", "/vms/vm1/migrate", ("vm.migrate", VM1), _check(), {}),
    "migrations.cancel": Case("DELETE", "/vms/vm1/migration", ("vm.migrate", VM1)),
    "migrations.history": Case("GET", "/vms/vm1/migrations", ("read", VM1)),
    "migrations.active": Case("GET", "/migrations", ("read", SYSTEM)),
    "snapshots.info": Case("GET", "/vms/vm1/snapshots", ("read", VM1)),
    "snapshots.create": Case("POST", "/vms/vm1/snapshots", ("vm.snapshot", VM1), _check(),
                             {"description": "matrix"}),
    "snapshots.restore": Case("POST", "/vms/vm1/snapshots/no-such-snapshot/restore",
                              ("vm.snapshot", VM1), _check(), {}),
    "backups.info": Case("GET", "/vms/vm1/backups", ("read", VM1)),
    "backups.create": Case("POST", "/vms/vm1/backups", ("vm.backup", VM1), _check(), {}),
    "backups.remove": Case("DELETE", "/backups/no-such-backup", ("vm.backup", SYSTEM),
                           _check()),
    "backups.restore": Case("POST", "/backups/no-such-backup/restore", ("vm.backup", SYSTEM),
                            _check(), {"disk_name": "d9"}),
    "vm_devices.nic": Case("PUT", "/vms/vm1/nics/nic1", ("vm.edit", VM1), _check(),
                           {"settings": {"network": "kestrelmgmt"}}),
    "vm_devices.disk": Case("PUT", "/vms/vm1/disks/data", ("vm.edit", VM1), _check(),
                            {"settings": {"size": "1GiB", "storage_domain": "sd1"}}),
    "snapshot_merge.delete": Case("DELETE", "/vms/vm1/snapshots/no-such-snapshot",
                                  ("vm.snapshot", VM1)),
    "networks.info": Case("GET", "/clusters/c1/networks", ("read", C1)),
    "networks.ensure": Case("PUT", "/clusters/c1/networks/n1", ("cluster.edit", C1), _check(),
                            {}),
    "networks.remove": Case("DELETE", "/clusters/c1/networks/n1", ("cluster.edit", C1),
                            _check()),
    "affinity_groups.info": Case("GET", "/clusters/c1/affinity_groups", ("read", C1)),
    "affinity_groups.ensure": Case("PUT", "/clusters/c1/affinity_groups/ag1",
                                   ("cluster.edit", C1), _check(), {}),
    "affinity_groups.remove": Case("DELETE", "/clusters/c1/affinity_groups/ag1",
                                   ("cluster.edit", C1), _check()),
    "storage_domains.info": Case("GET", "/storage_domains", ("read", SYSTEM)),
    "storage_domains.ensure": Case("PUT", "/storage_domains/sd1", ("storage.manage", SYSTEM),
                                   _check(), {"type": "file", "path": "/srv/matrix"}),
    "storage_domains.remove": Case("DELETE", "/storage_domains/sd1",
                                   ("storage.manage", SYSTEM), _check()),
    "luns.info": Case("GET", "/luns", ("read", SYSTEM)),
    # No check_mode: a name no allowed caller's request can register (bad path).
    "luns.register": Case("PUT", "/luns/lun1", ("storage.manage", SYSTEM),
                          body={"path": "/dev/disk/by-id/wwn-0x5000"}),
    "luns.remove": Case("DELETE", "/luns/no-such-lun", ("storage.manage", SYSTEM)),
    "events.info": Case("GET", "/events", ("read", VM1),
                        {"entity_type": "vm", "entity_name": "vm1"}),
    "templates.info": Case("GET", "/templates", ANY_USER),
    # A new template from vm1: made in vm1's cluster.
    "templates.ensure": Case("PUT", "/templates/t1", ("template.create", C1), _check(),
                             {"vm": "vm1"}),
    "images.list": Case("GET", "/disks", ("read", SYSTEM)),
    "images.floating": Case("GET", "/disks/d1", ("read", SYSTEM)),
    "images.remove": Case("DELETE", "/disks/d1", ("disk.delete", SYSTEM), _check()),
    "images.upload": Case("PUT", "/disks/d1/content", ("disk.create", SYSTEM),
                          _check(storage_domain="sd1")),
    "images.download": Case("GET", "/disks/d1/content", ("disk.download", SYSTEM)),
    "images.upload_vm_disk": Case("PUT", "/vms/vm1/disks/data/content",
                                  ("vm.disk_transfer", VM1),
                                  _check(settings='{"storage_domain": "sd1"}')),
    "images.download_vm_disk": Case("GET", "/vms/vm1/disks/data/content",
                                    ("vm.disk_transfer", VM1)),
    "users.info": Case("GET", "/users", ("access.manage", SYSTEM)),
    "users.ensure": Case("PUT", "/users/newcomer", ("access.manage", SYSTEM), _check(),
                         {"description": "matrix"}),
    "users.remove": Case("DELETE", "/users/newcomer", ("access.manage", SYSTEM), _check()),
    "groups.info": Case("GET", "/groups", ("access.manage", SYSTEM)),
    "groups.ensure": Case("PUT", "/groups/g1", ("access.manage", SYSTEM), _check(), {}),
    "groups.remove": Case("DELETE", "/groups/g1", ("access.manage", SYSTEM), _check()),
    "permissions.info": Case("GET", "/permissions", ("access.manage", SYSTEM)),
    "permissions.ensure": Case("PUT", "/permissions", ("access.manage", SYSTEM), _check(),
                               {"role": "ReadOnly", "user": "admin"}),
    # Own tokens: any user.
    "tokens.info": Case("GET", "/tokens", ANY_USER),
    "tokens.create": Case("POST", "/tokens", ANY_USER, _check(), {"name": "matrix"}),
    "tokens.revoke": Case("DELETE", "/tokens/no-such-token", ANY_USER, _check()),
}

# Someone else's tokens need access.manage (decided in the service).
VARIANTS: dict[str, Case] = {
    "tokens.info (another user's)": Case("GET", "/tokens", ("access.manage", SYSTEM),
                                         {"user": "admin"}),
    "tokens.create (for another user)": Case("POST", "/tokens", ("access.manage", SYSTEM),
                                             _check(), {"name": "matrix", "user": "admin"}),
}

# (role, object the grant is on, the token's own role: never more than both allow)
PRINCIPALS = [(role, SYSTEM, "") for role in ROLES] + [
    ("VmOperator", VM1, ""), ("UserVmManager", VM1, ""), ("ClusterAdmin", C1, ""),
    ("SuperUser", SYSTEM, "VmOperator"), ("ClusterAdmin", C1, "ReadOnly")]


def covers(grant_on: tuple[str, str], target: tuple[str, str]) -> bool:
    while target is not None:
        if target == grant_on or grant_on == SYSTEM:
            return True
        target = PARENT.get(target)
    return False


def allowed(role: str, grant_on: tuple[str, str], token_role: str, need) -> bool:
    if need in (ANY_USER, PUBLIC):
        return True
    permission, target = need
    return (permission in ROLES[role] and covers(grant_on, target)
            and (not token_role or permission in ROLES[token_role]))


@pytest.fixture(scope="module")
def world(api, connect):
    """c1 with host h1 and a Down vm1; a token for each principal."""
    engine = api.engine
    engine.clusters.ensure("c1", virt_type="qemu")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster="c1")
    engine.vms.ensure(VM1_SPEC, state="stopped")
    tokens = {}
    for role, (object_type, object_name), token_role in PRINCIPALS:
        # Token-only users: no password to hash.
        user = f"matrix-{role}-{object_type}-{token_role}".lower()
        engine.users.ensure(user)
        engine.permissions.ensure(role=role, user=user, object_type=object_type,
                                  object_name=object_name)
        tokens[(role, (object_type, object_name), token_role)] = engine.tokens.create(
            name="matrix", user=user, role=token_role).entity["token"]
    return connect(), tokens


def _served_operations(client: httpx.Client) -> set[str]:
    document = client.get("/openapi.json").json()
    return {operation["operationId"] for item in document["paths"].values()
            for operation in item.values()}


def test_every_served_operation_has_a_row_in_the_matrix(world):
    client, _ = world
    assert _served_operations(client) - OPERATIONS.keys() == set(), \
        "add these operations to OPERATIONS"


def _request(client: httpx.Client, case: Case, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.request(case.method, case.path, params=case.params, json=case.body,
                          headers=headers)


@pytest.mark.parametrize(("role", "grant_on", "token_role"), PRINCIPALS,
                         ids=[f"{role}@{on[0]}{'/' + on[1] if on[1] else ''}"
                              f"{'-token-' + token_role if token_role else ''}"
                              for role, on, token_role in PRINCIPALS])
def test_each_role_is_allowed_exactly_what_its_permissions_give(world, role, grant_on,
                                                                token_role):
    client, tokens = world
    token = tokens[(role, grant_on, token_role)]
    served = _served_operations(client)
    cases = {**{op: case for op, case in OPERATIONS.items()
                if op in served and case.need != PUBLIC}, **VARIANTS}
    wrong = []
    for name, case in cases.items():
        answer = _request(client, case, token)
        if allowed(role, grant_on, token_role, case.need):
            if answer.status_code == 403 or answer.status_code >= 500:
                wrong.append(f"{name}: allowed, got {answer.status_code} {answer.text[:200]}")
            continue
        permission = case.need[0]
        body = answer.json()
        if answer.status_code != 403 or body.get("code") != "PermissionDenied" \
                or body["details"].get("permission") != permission \
                or f"'{permission}'" not in body.get("message", ""):
            wrong.append(f"{name}: should lack {permission}, got {answer.status_code} "
                         f"{answer.text[:200]}")
    assert wrong == []


def test_public_routes_need_no_token(api, world):
    client, _ = world
    user, password = api.user("ReadOnly")
    bodies = {"auth.login": {"username": user, "password": password}}
    for name, case in OPERATIONS.items():
        if case.need == PUBLIC:
            answer = client.request(case.method, case.path, json=bodies.get(name, case.body))
            assert answer.status_code in (200, 201), (name, answer.text)
