"""Render a VM entity to libvirt domain XML through a Jinja2 template."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from engine_lib.domxml import viewmodel
from engine_lib.model import Vm


class _Environment(Environment):
    """Looks keys up in the view-model's dicts first.

    Jinja's default ``getattr`` tries ``getattr(obj, name)`` before ``obj[name]``,
    so every ``{{ disk.alias }}`` on a dict raised and caught an AttributeError:
    that was most of the render time (see ``make bench-xml``).
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


_ENV = _Environment(
    loader=PackageLoader("engine_lib.domxml", "templates"),
    # Everything printed comes from users at some remove: escape it all.
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_DOMAIN = _ENV.get_template("domain.xml.j2")


# What a masked secret reads as: that one is set is visible, its value is not.
SECRET_MASK = "********"


def render(vm: Vm) -> str:
    return _DOMAIN.render(vm=viewmodel.build(vm))


def render_redacted(vm: Vm) -> str:
    """The XML with its secrets masked (the console password, the cloud-init user-data):
    what --diff and ``kestrel vm xml`` print. Compare with ``render`` to see a change."""
    model = viewmodel.build(vm)
    if model["graphics"] and model["graphics"].get("password"):
        model["graphics"] = {**model["graphics"], "password": SECRET_MASK}
    seed = model["metadata"]["payload"]
    if seed:
        files = [(name, SECRET_MASK if name == "user-data" else content)
                 for name, content in seed["files"]]
        model["metadata"] = {**model["metadata"], "payload": {**seed, "files": files}}
    return _DOMAIN.render(vm=model)


def metadata_xml(vm: Vm) -> str:
    """The domain's ``<kestrel:vm>`` metadata element alone: what an agent sets on a
    running domain (virDomainSetMetadata) when its chain changes under it."""
    model = viewmodel.build(vm)
    xml = _DOMAIN.render(vm=model)
    prefix = model["metadata"]["prefix"]
    start, end_tag = xml.index(f"<{prefix}:vm "), f"</{prefix}:vm>"
    return xml[start:xml.index(end_tag) + len(end_tag)]
