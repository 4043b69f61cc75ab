"""Previews of a spec file, for ``kestrel xml render`` and ``kestrel devices match``.

Without a database the VM is built in memory with ids derived from its name
(UUIDv5), so rendering the same file twice gives the same bytes. With one, a
VM that exists keeps its stored ids and MACs (the spec is applied in a
transaction that is rolled back), and a new one takes MACs from its cluster's
pool; nothing is written either way.

A service, not part of domxml or devices: building the VM from a spec is the VM
configuration service's job (vm_config), and those packages sit below the services.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from engine_lib.devices.live import parse
from engine_lib.devices.match import correlate
from engine_lib.domxml.render import render
from engine_lib.model import Vm
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services import vm_config
from engine_lib.services.common import find
from engine_lib.spec import normalize_vm


def load_spec(path: str) -> Any:
    """Read a YAML or JSON spec file (JSON is YAML); errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSpec("spec", f"cannot read {path}: {exc}") from None
    try:
        if path.endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidSpec("spec", f"{path} is not valid YAML or JSON: {exc}") from None


def render_spec(spec: Any, virt_type: str = "kvm") -> str:
    return render(vm_config.build_offline(normalize_vm(spec), virt_type))


class _PreviewContext(vm_config.DbContext):
    """Cluster and MACs from the database; new ids derived, so a preview is repeatable."""

    def __init__(self, session, vm_name: str):
        super().__init__(session)
        self._ids = vm_config.OfflineContext(vm_name)

    def new_id(self, key: str) -> str:
        return self._ids.new_id(key)


def render_spec_stored(store, spec: Any) -> str:
    wanted = normalize_vm(spec)
    with store.transaction(commit=False) as session:
        ctx = _PreviewContext(session, wanted["name"])
        with session.no_autoflush:
            vm = find(session, Vm, wanted["name"])
            if vm is None:
                vm = vm_config.create(None, wanted, ctx)
            else:
                vm_config.apply(session, vm, wanted, ctx)
            xml = render(vm)
        session.rollback()
    return xml


# -- kestrel devices match: the correlation for a spec and a live XML, changing nothing --


def read_live(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSpec("live", f"cannot read {path}: {exc}") from None


def correlate_spec(spec: Any, live_xml: str, store=None) -> dict:
    """Match ``live_xml`` against the devices of the VM ``spec`` describes.

    Without a store the VM is built offline (ids derived from its name, as
    ``kestrel xml render`` does); with one, a stored VM of that name brings its
    own device rows, unmanaged ones included. Nothing is written either way.
    """
    wanted = normalize_vm(spec)
    uuid, live = parse(live_xml)
    if store is None:
        vm = vm_config.build_offline(wanted)
        return {"vm": vm.name, "domain_uuid": uuid, **correlate(vm.devices, live).as_dict()}
    with store.transaction(commit=False) as session:
        with session.no_autoflush:
            vm = find(session, Vm, wanted["name"])
            if vm is None:
                vm = vm_config.build_offline(wanted)
            result = correlate(vm.devices, live).as_dict()
        session.rollback()
    return {"vm": wanted["name"], "domain_uuid": uuid, **result}
