"""``kestrel devices match``: the correlation for a spec and a live XML, changing nothing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine_lib.devices.live import parse
from engine_lib.devices.match import correlate
from engine_lib.model import Vm
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services import vm_config
from engine_lib.services.common import find
from engine_lib.spec import normalize_vm

if TYPE_CHECKING:
    from engine_lib.store import Store


def read_live(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSpec("live", f"cannot read {path}: {exc}") from None


def correlate_spec(spec: Any, live_xml: str, store: Store | None = None) -> dict[str, Any]:
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
