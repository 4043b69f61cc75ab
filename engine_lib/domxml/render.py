"""Render a VM entity to libvirt domain XML through a Jinja2 template."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined

from engine_lib.domxml import viewmodel
from engine_lib.model import Vm

_ENV = Environment(
    loader=PackageLoader("engine_lib.domxml", "templates"),
    # Everything printed comes from users at some remove: escape it all.
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_DOMAIN = _ENV.get_template("domain.xml.j2")


def render(vm: Vm) -> str:
    return _DOMAIN.render(vm=viewmodel.build(vm))
