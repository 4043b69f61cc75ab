"""CPU model levels: a VM that asks for a model runs on a host of that model or a newer one.

oVirt expresses this as the cluster's CPU type; libvirt as named models. Within
one vendor line the models are ordered, and a host of a later model can present
an earlier one. Models outside these lines are compared by name only.
"""

from __future__ import annotations

LINES: tuple[tuple[str, ...], ...] = (
    ("Conroe", "Penryn", "Nehalem", "Westmere", "SandyBridge", "IvyBridge", "Haswell",
     "Broadwell", "Skylake-Client", "Skylake-Server", "Cascadelake-Server", "Icelake-Server",
     "SapphireRapids", "GraniteRapids"),
    ("Opteron_G1", "Opteron_G2", "Opteron_G3", "Opteron_G4", "Opteron_G5", "EPYC", "EPYC-Rome",
     "EPYC-Milan", "EPYC-Genoa"),
)
_LEVEL = {model.lower(): (line, level) for line, models in enumerate(LINES)
          for level, model in enumerate(models)}


def compatible(host_model: str, vm_model: str) -> bool:
    """True when a host whose CPU is ``host_model`` can give a VM ``vm_model``."""
    if host_model.lower() == vm_model.lower():
        return True
    host, vm = _LEVEL.get(host_model.lower()), _LEVEL.get(vm_model.lower())
    return host is not None and vm is not None and host[0] == vm[0] and host[1] >= vm[1]
