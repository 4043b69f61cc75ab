"""Scheduling: which host runs a VM. Pure: hosts, claims and a VM in, a decision out."""

from engine_lib.scheduling.placement import Decision, HostState, VmRequest, place

__all__ = ["Decision", "HostState", "VmRequest", "place"]
