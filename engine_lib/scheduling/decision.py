"""A placement's answer, and why: built from arrays, put into words only when asked.

At 5,000 hosts a placement removes thousands of hosts; formatting a reason for
each would cost more than the placement itself. The decision keeps which hosts
each filter removed (index arrays) and a copy of the claim columns as they were,
and turns them into sentences in ``filtered`` / ``explain()`` on demand.
"""

from __future__ import annotations

from typing import Any

from engine_lib.scheduling.filters import Filter
from engine_lib.scheduling.state import VmRequest
from engine_lib.scheduling.table import FloatColumn, HostTable, Indexes, IntColumn


class Decision:
    def __init__(self, vm: VmRequest, policy_name: str, table: HostTable,
                 snapshot: dict[str, IntColumn],
                 removed: list[tuple[Filter, Any, Indexes]], candidates: Indexes,
                 scores: list[tuple[str, float, FloatColumn]], total: FloatColumn,
                 chosen: int | None):
        self.vm = vm
        self.policy = policy_name
        self._table = table
        self._snapshot = snapshot
        self._removed = removed
        self._candidates = candidates
        self._scores = scores
        self._total = total
        self.host_index = chosen
        self.host: str | None = None if chosen is None else table.names[chosen]
        self._filtered: dict[str, str] | None = None

    @property
    def filtered(self) -> dict[str, str]:
        """Host name -> why a filter removed it (the first filter it failed)."""
        if self._filtered is None:
            out: dict[str, str] = {}
            for check, detail, indexes in self._removed:
                for i in indexes:
                    state = self._table.state(int(i), self._snapshot)
                    out[state.name] = check.check(state, self.vm, detail) or check.description
            self._filtered = out
        return self._filtered

    @property
    def weights(self) -> dict[str, float]:
        """Host name -> total weight of each host that passed every filter (higher wins)."""
        names = self._table.names
        return {names[i]: float(t) for i, t in zip(self._candidates, self._total)}

    def removed_by(self) -> dict[str, list[str]]:
        names = self._table.names
        return {check.name: [names[i] for i in indexes] for check, _d, indexes in self._removed}

    def weight_table(self) -> list[dict[str, Any]]:
        """One row per candidate host, best first: its total and each unit's share."""
        names = self._table.names
        order = sorted(range(len(self._candidates)),
                       key=lambda k: (-self._total[k], names[self._candidates[k]]))
        return [{"host": names[self._candidates[k]], "total": round(float(self._total[k]), 6),
                 "units": {unit: round(float(scores[k]), 6) for unit, _f, scores in self._scores}}
                for k in order]

    def explain(self) -> dict[str, Any]:
        return {
            "vm": self.vm.name,
            "policy": self.policy,
            "host": self.host,
            "filtered": dict(self.filtered),
            "removed_by": self.removed_by(),
            "factors": {unit: factor for unit, factor, _s in self._scores},
            "weights": self.weights,
            "weight_table": self.weight_table(),
        }
