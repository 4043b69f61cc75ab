"""Template versions: the settings and read-only volumes VMs are made from.

A version is made from a stopped VM (each disk copied by an agent into a new
read-only volume on the same storage domain, its chain flattened), from a
snapshot of a VM (its settings then, each disk's frozen volume copied), or from a
floating disk (an uploaded image: its volume becomes the template's as it is).
Versions of one name are numbered 1, 2, ...; a VM takes the latest unless it
names one (oVirt's sub-versions).

The rows are written first, ``locked``, so a second create of the same version
is refused while the copy runs; a copy that fails removes what it made (files,
then rows), so no half template is left. When even the cleanup cannot reach an
agent the rows stay ``illegal`` for a later removal to finish.

A version is removed with its volumes, but never while a thin VM's disk (a
qcow2 overlay on its volume) depends on it: the refusal names those VMs.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import ColumnElement, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from engine_lib import spec as specs
from engine_lib.model import Template, Vm, Volume, new_id
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError, NotFound
from engine_lib.services import access, listing, snapshot_sources, vm_sources, volume_jobs, volumes
from engine_lib.services.common import audit, get_cluster
from engine_lib.services.results import Outcome
from engine_lib.services.vm_config import NEW_VM_DEFAULTS

STATES = ("present", "absent")
TEMPLATE_STATUSES = ("ok", "locked", "illegal")
# Settings a template made from a disk takes (the module's names, as spec.vm's).
DISK_TEMPLATE_SETTINGS = ("memory", "max_memory", "cpu", "machine", "firmware", "nics",
                          "custom_properties", "graphics", "video", "guest_agent", "rng",
                          "serial_console", "balloon", "high_availability")


class TemplateNotFound(NotFound):
    code = "TemplateNotFound"

    def __init__(self, name: str):
        super().__init__("template", name)


def versions(session: Session, name: str) -> list[Template]:
    return list(session.scalars(select(Template).where(Template.name == name)
                                .order_by(Template.version_number)))


def lookup(session: Session, name: str, number: int | None = None, *,
           field: str = "template") -> Template:
    """A template version by name and number; the latest usable one without a number."""
    found = versions(session, name)
    if not found:
        raise InvalidSpec(field, f"template '{name}' does not exist")
    if number is None:
        ready = [t for t in found if t.status == "ok"]
        if not ready:
            raise Conflict(f"template '{name}' has no usable version (status "
                           f"{found[-1].status}); nothing was changed")
        return ready[-1]
    for template in found:
        if template.version_number == number:
            if template.status != "ok":
                raise Conflict(f"template '{name}' version {number} is {template.status}")
            return template
    raise InvalidSpec(f"{field}_version" if field == "template" else "version.number",
                      f"template '{name}' has no version {number} (versions: "
                      f"{', '.join(str(t.version_number) for t in found)})")


def template_dict(template: Template, session: Session | None = None) -> dict:
    spec = template.spec
    out = {
        "id": template.id, "name": template.name,
        "version": {"number": template.version_number, "name": template.version_name},
        "description": template.description, "cluster": template.cluster.name,
        "status": template.status, "sealed": template.sealed,
        "memory_mib": spec.get("memory_mib"), "cpu": spec.get("cpu"),
        "machine": spec.get("machine"), "firmware": spec.get("firmware"),
        "custom_properties": spec.get("custom_properties", {}),
        "disks": [{k: d.get(k) for k in ("name", "image_id", "volume_id", "storage_domain",
                                          "size_mib",
                                          "format", "interface", "bootable")}
                  for d in spec.get("disks", [])],
        "nics": [dict(n) for n in spec.get("nics", [])],
    }
    if session is not None:
        out["vms"] = sorted(session.scalars(select(Vm.name).where(Vm.template_id == template.id)))
    return out


def dependents(session: Session, template: Template) -> list[str]:
    """What keeps a version's volumes in use: VMs (and floating disks) whose volume
    chain reaches one of them, by name."""
    found = volumes.children(session, [v.id for v in template.volumes])
    # (VM names have no spaces; "template <name>" is another template's volume.)
    return sorted({f"VM '{vm}'" if vm and " " not in vm else vm or f"disk '{disk}'"
                   for vm, disk in found})


class TemplateService:
    def __init__(self, engine):
        self.engine = engine

    # -- reading ---------------------------------------------------------------------------

    def info(self, name: str | None = None, version: int | None = None) -> list[dict]:
        with self.engine.store.transaction(commit=False) as session:
            query = select(Template).order_by(Template.name, Template.version_number)
            if name:
                query = query.where(Template.name == name)
            if version is not None:
                query = query.where(Template.version_number == version)
            return [template_dict(t, session) for t in session.scalars(query)]

    def page(self, *, offset: int = 0, limit: int = listing.DEFAULT_LIMIT,
             name: str | None = None, version: int | None = None,
             status: str | None = None, visible: ColumnElement | None = None) -> dict:
        """One page of the template versions the caller may read, by name then version
        (services.listing); each with the VMs made from it, found for the page at once."""
        with self.engine.store.transaction(commit=False) as session:
            query = select(Template).options(selectinload(Template.cluster)).order_by(
                Template.name, Template.version_number)
            if version is not None:
                query = query.where(Template.version_number == listing.whole(
                    "version", version, 1))
            if status is not None:
                status = specs.choice("status", status, TEMPLATE_STATUSES)
            found = listing.page(session, query, to_dict=template_dict, offset=offset,
                                 limit=limit, name=name, name_column=Template.name,
                                 status=status, status_column=Template.status,
                                 visible=listing.readable(session, "template", visible))
            made: dict[str, list[str]] = {item["id"]: [] for item in found["items"]}
            for template_id, vm in session.execute(
                    select(Vm.template_id, Vm.name).where(Vm.template_id.in_(made))
                    .order_by(Vm.name)):
                made[template_id].append(vm)
            for item in found["items"]:
                item["vms"] = made[item["id"]]
            return found

    # -- the module's entry point ----------------------------------------------------------

    def ensure(self, name: str, *, state: str = "present", vm: str | None = None,
               disk: str | None = None, cluster: str | None = None,
               version: dict | None = None, seal: bool = False, description: str | None = None,
               settings: dict | None = None, snapshot_id: str | None = None,
               timeout: float | None = None,
               check_mode: bool = False,
               progress: Callable[[dict], None] | None = None) -> Outcome:
        """Make sure a template version exists (made from ``vm`` or ``disk``) or does not.

        ``version`` is ``{number, name}``: a version is found by its number, else by
        its name, else any version of ``name`` will do; a missing one is created with
        the next number (a given number must be that one). With ``snapshot_id`` the
        version is made from that snapshot of ``vm`` (which may be running).
        """
        specs.choice("state", state, STATES)
        specs.name("name", name)
        if snapshot_id:
            snapshot_id = specs.object_id("snapshot_id", snapshot_id)
            if vm is None:
                raise InvalidSpec("snapshot_id", "names a snapshot of the VM given as vm "
                                                 "(give vm)")
        version = self._version(version)
        if state == "absent":
            return self._remove(name, version, check_mode)
        with self.engine.store.transaction(commit=False) as session:
            existing = self._find(session, name, version)
            number = existing.version_number if existing is not None else None
            latest = max((t.version_number for t in versions(session, name)), default=0)
        if number is not None:
            return self._update(name, number, description, check_mode)
        number = version.get("number") or latest + 1
        if number != latest + 1:
            raise InvalidSpec("version.number", f"template '{name}' has versions up to {latest}; "
                                                f"a new version is number {latest + 1}")
        if (vm is None) == (disk is None):
            raise InvalidSpec("vm", "give exactly one source for a new template version: "
                                    "vm (a stopped VM) or disk (a floating disk)")
        if settings and vm is not None:
            raise InvalidSpec(next(iter(settings)), "applies to a template made from a disk "
                                                    "(one made from a VM takes the VM's)")
        new = {"name": name, "number": number, "version_name": version.get("name", ""),
               "description": description or "", "seal": seal}
        if vm is not None:
            return self._from_vm(new, vm, cluster, check_mode, progress, timeout,
                                 snapshot_id or "")
        return self._from_disk(new, disk, cluster, settings or {}, check_mode)

    @staticmethod
    def _version(version: dict | None) -> dict:
        if version is None:
            return {}
        if not isinstance(version, dict) or set(version) - {"number", "name"}:
            raise InvalidSpec("version", "must be a mapping with number and/or name")
        out = {}
        if version.get("number") is not None:
            out["number"] = specs.positive_int("version.number", version["number"], 100000)
        if version.get("name"):
            out["name"] = specs.text("version.name", version["name"], 64)
        return out

    @staticmethod
    def _find(session: Session, name: str, version: dict) -> Template | None:
        found = versions(session, name)
        if "number" in version:
            found = [t for t in found if t.version_number == version["number"]]
        elif "name" in version:
            found = [t for t in found if t.version_name == version["name"]]
        if found and found[-1].status == "locked":
            raise Conflict(f"template '{name}' version {found[-1].version_number} is being "
                           "created (locked); wait for it to finish")
        return found[-1] if found else None

    def _update(self, name: str, number: int, description: str | None,
                check_mode: bool) -> Outcome:
        with self.engine.store.transaction(commit=not check_mode) as session:
            template = lookup(session, name, number)
            before = template_dict(template, session)
            if description is not None and template.description != description:
                template.description = description
                session.flush()
                audit(session, "template", name, f"version {number}: description changed")
            after = template_dict(template, session)
        return Outcome(before != after, after, {"before": before, "after": after})

    # -- creation --------------------------------------------------------------------------

    def _from_vm(self, new: dict, vm_name: str, cluster: str | None, check_mode: bool,
                 progress: Callable[[dict], None] | None, timeout: float | None,
                 snapshot_id: str = "") -> Outcome:
        with self.engine.store.transaction(commit=not check_mode) as session:
            source = session.execute(select(Vm).where(Vm.name == vm_name).with_for_update()
                                     ).scalar_one_or_none()
            if source is None:
                raise InvalidSpec("vm", f"VM '{vm_name}' does not exist")
            if cluster is not None and cluster != source.cluster.name:
                raise InvalidSpec("cluster", f"VM '{vm_name}' is in cluster "
                                             f"'{source.cluster.name}', not '{cluster}'")
            snapshot = None
            if snapshot_id:
                snapshot = snapshot_sources.find(session, source, snapshot_id=snapshot_id,
                                                 vm_field="vm")
                spec = snapshot_sources.settings(snapshot, source)
            else:
                vm_sources.require_down(source, f"making template '{new['name']}' from it")
                spec = vm_sources.settings_of(source)
            copies, disks = [], []
            for index, disk in enumerate(spec["disks"]):
                field = f"vm.disks[{index}]"
                origin = snapshot_sources.disk_source(session, snapshot, disk) if snapshot \
                    else vm_sources.disk_source(session, source, disk, field)
                volume = Volume(id=new_id(), image_id=new_id(), storage_domain=disk["storage_domain"],
                                format=disk["format"], size_mib=disk["size_mib"],
                                content_type="data", status="locked", readonly=True,
                                description=f"template {new['name']} v{new['number']} disk "
                                            f"{disk['name']}")
                copies.append((origin, volume))
                # A flattened copy: the source's chain is not the template's.
                disks.append({k: v for k, v in disk.items() if k not in ("image_id", "chain")}
                             | {"image_id": volume.image_id, "volume_id": volume.id})
            spec["disks"] = disks
            host = vm_sources.helper_host(session, source.cluster_id,
                                          f"cannot make template '{new['name']}'")
            template = self._insert(session, new, source.cluster_id, spec,
                                    [v for _, v in copies], f"from VM '{vm_name}'"
                                    + (f" snapshot {snapshot_id}" if snapshot_id else ""))
            if snapshot is not None and copies:
                snapshot_sources.lock(snapshot)
            template_id = template.id
            planned = template_dict(template, session)
            targets = [(origin, vm_sources.volume_dict(v)) for origin, v in copies]
        if check_mode:
            return Outcome(True, planned, {"before": {}, "after": planned})
        try:
            on_job = snapshot_sources.on_job(self.engine, snapshot_id, host.name) \
                if snapshot_id and targets else None
            return self._copy(template_id, host, targets, disks, new["seal"], progress, timeout,
                              on_job)
        finally:
            if snapshot_id and targets:
                snapshot_sources.release(self.engine, snapshot_id)

    def _copy(self, template_id: str, host, targets: list, disks: list, seal: bool,
              progress: Callable[[dict], None] | None, timeout: float | None,
              on_job: Callable[[str], None] | None) -> Outcome:
        agent = self.engine.agent(host.address, host.port)
        made: list[dict] = []
        try:
            for origin, target in targets:
                made.append(target)
                vm_sources.copy(self.engine, host, origin, target, progress, timeout, on_job)
            if seal and targets:
                # The boot disk: the first bootable one, else the first.
                boot = next((i for i, d in enumerate(disks) if d.get("bootable")), 0)
                self._seal(agent, targets[boot][1])
        except KestrelError as err:
            self._discard(template_id, agent, made, err)
            raise
        return self._ready(template_id)

    def _from_disk(self, new: dict, disk: str, cluster: str | None, settings: dict,
                   check_mode: bool) -> Outcome:
        if cluster is None:
            raise InvalidSpec("cluster", "is required for a template made from a disk")
        unknown = set(settings) - set(DISK_TEMPLATE_SETTINGS)
        if unknown:
            raise InvalidSpec(sorted(unknown)[0], "is not a template setting")
        # The VM settings, checked as a VM spec would be (and in its normalized form).
        spec = specs.normalize_vm({"name": "template", **settings})
        spec.pop("name")
        spec = {**NEW_VM_DEFAULTS, **spec}
        with self.engine.store.transaction(commit=not check_mode) as session:
            row = get_cluster(session, cluster)
            volume = session.execute(select(Volume).where(
                Volume.name == disk, Volume.template_id.is_(None)).with_for_update()
            ).scalar_one_or_none()
            if volume is None:
                raise InvalidSpec("disk", f"'{disk}' is not a floating disk (upload one with "
                                          "kestrel.virt.disk and no vm)")
            if volume.content_type != "data":
                raise InvalidSpec("disk", f"disk '{disk}' is an {volume.content_type}, not a disk "
                                          "image")
            if volume.status != "ok":
                raise Conflict(f"disk '{disk}' is {volume.status} (an upload may be running)")
            spec["disks"] = [{"name": disk, "size_mib": volume.size_mib, "format": volume.format,
                              "storage_domain": volume.storage_domain, "interface": "virtio",
                              "bootable": True, "boot_order": None, "readonly": False,
                              "shareable": False, "cache": "default", "io": "default",
                              "discard": "ignore", "iotune": {}, "serial": "",
                              "image_id": volume.image_id, "volume_id": volume.id}]
            # The disk becomes the template's volume: read-only, and no longer floating.
            volume.name, volume.readonly, volume.status = "", True, "locked"
            template = self._insert(session, new, row.id, spec, [volume], f"from disk '{disk}'")
            template_id = template.id
            planned = template_dict(template, session)
            host = vm_sources.helper_host(session, row.id, f"cannot seal template "
                                                           f"'{new['name']}'") \
                if new["seal"] else None
            target = vm_sources.volume_dict(volume)
        if check_mode:
            return Outcome(True, planned, {"before": {}, "after": planned})
        if host is not None:
            agent = self.engine.agent(host.address, host.port)
            try:
                self._seal(agent, target)
            except KestrelError:
                self._give_back(template_id, disk)
                raise
        return self._ready(template_id)

    @staticmethod
    def _insert(session: Session, new: dict, cluster_id: str, spec: dict,
                volumes: list[Volume], origin: str) -> Template:
        template = Template(name=new["name"], version_number=new["number"],
                            version_name=new["version_name"], description=new["description"],
                            cluster_id=cluster_id, spec=spec, sealed=new["seal"],
                            status="locked")
        session.add(template)
        try:
            session.flush()
        except IntegrityError:
            raise Conflict(f"template '{new['name']}' version {new['number']} is being created "
                           "by someone else; nothing was changed") from None
        for volume in volumes:
            volume.template_id = template.id
            session.add(volume)
        session.flush()
        audit(session, "template", new["name"],
              f"version {new['number']} being created {origin}")
        return template

    @staticmethod
    def _seal(agent, target: dict) -> None:
        """virt-sysprep on the template's boot disk."""
        job = agent.seal_volume({k: target[k] for k in ("domain", "image", "volume", "format")})
        volume_jobs.wait(agent, job["job"])

    def _ready(self, template_id: str) -> Outcome:
        with self.engine.store.transaction() as session:
            template = session.get(Template, template_id)
            template.status = "ok"
            for volume in template.volumes:
                volume.status = "ok"
            audit(session, "template", template.name,
                  f"version {template.version_number} created")
            entity = template_dict(template, session)
        return Outcome(True, entity, {"before": {}, "after": entity})

    def _discard(self, template_id: str, agent, made: list[dict], err: KestrelError) -> None:
        """Undo a creation that failed: the copies' files, then the rows."""
        why = vm_sources.delete_quietly(agent, made)
        with self.engine.store.transaction() as session:
            template = session.get(Template, template_id)
            if why:
                template.status = "illegal"
                for volume in template.volumes:
                    volume.status = "illegal"
                audit(session, "template", template.name,
                      f"version {template.version_number} failed ({err.message}) and its "
                      f"volumes could not be deleted ({why}); remove it with state absent",
                      "error")
                return
            for volume in list(template.volumes):
                session.delete(volume)
            session.flush()
            audit(session, "template", template.name,
                  f"version {template.version_number} not created: {err.message}", "error")
            session.delete(template)

    def _give_back(self, template_id: str, disk: str) -> None:
        """A template made from a disk failed: the disk is floating again."""
        with self.engine.store.transaction() as session:
            template = session.get(Template, template_id)
            for volume in list(template.volumes):
                volume.name, volume.readonly, volume.status = disk, False, "ok"
                volume.template_id = None
            session.flush()
            session.delete(template)

    # -- removal ---------------------------------------------------------------------------

    def _remove(self, name: str, version: dict, check_mode: bool) -> Outcome:
        with self.engine.store.transaction(commit=False) as session:
            found = versions(session, name)
            if "number" in version:
                found = [t for t in found if t.version_number == version["number"]]
            elif "name" in version:
                found = [t for t in found if t.version_name == version["name"]]
            if not found:
                return Outcome(False, None, {"before": {}, "after": {}})
            before = [template_dict(t, session) for t in found]
            for template in found:
                if template.status == "locked":
                    raise Conflict(f"template '{name}' version {template.version_number} is "
                                   "being created (locked); it cannot be removed now")
                users = dependents(session, template)
                if users:
                    raise Conflict(f"template '{name}' version {template.version_number} is "
                                   f"used by {', '.join(users)} (thin disks on its volumes); "
                                   "remove them first; nothing was changed",
                                   dependents=users)
            host = vm_sources.helper_host(session, found[0].cluster_id,
                                          f"cannot delete the volumes of template '{name}'")
            volumes = [vm_sources.volume_dict(v) for t in found for v in t.volumes]
            ids = [t.id for t in found]
        diff = {"before": before if len(before) > 1 else before[0], "after": {}}
        if check_mode:
            return Outcome(True, None, diff)
        # The files go first: if that fails the rows are there to retry.
        if volumes:
            self.engine.agent(host.address, host.port).delete_volumes(volumes)
        with self.engine.store.transaction() as session:
            for template_id in ids:
                template = session.get(Template, template_id)
                # Cloned VMs are independent of it; they only forget where they came from.
                for vm in session.scalars(select(Vm).where(Vm.template_id == template_id)):
                    vm.template_id = None
                for volume in list(template.volumes):
                    session.delete(volume)
                session.flush()
                audit(session, "template", name, f"version {template.version_number} removed")
                session.delete(template)
            session.flush()
            access.forget_template_versions(session, name, ids)
        return Outcome(True, None, diff)

