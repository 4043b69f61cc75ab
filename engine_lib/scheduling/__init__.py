"""Scheduling: which host runs a VM. Pure: hosts, claims and a VM in, a decision out.

``place`` answers one placement; ``policies`` holds oVirt's cluster policies;
``balancing`` proposes migrations; ``simulate`` runs a list of VMs offline
(``kestrel schedule``).
"""

from engine_lib.scheduling.decision import Decision
from engine_lib.scheduling.placement import place
from engine_lib.scheduling.policies import POLICIES, Policy, resolve
from engine_lib.scheduling.state import AffinityGroup, Context, HostState, VmRequest
from engine_lib.scheduling.table import HostTable

__all__ = ["AffinityGroup", "Context", "Decision", "HostState", "HostTable", "POLICIES", "Policy",
           "VmRequest", "place", "resolve"]
