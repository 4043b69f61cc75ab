"""The agent's event stream: VM status changes, numbered, for long-polling clients.

The registry appends every change of a VM's status (or exit reason) here; the
engine asks ``GET /events?after=<seq>&timeout=<s>`` and gets what happened
after ``seq`` the moment it happens, instead of waiting for its next poll.

Sequence numbers start at 1 in every agent process, so each process has its
own ``instance`` id: a client that sees a new instance knows the numbering
restarted (the agent restarted) and that what it missed is lost. Only the
last ``capacity`` events are kept; a client asking for older ones is told so
(``gap``) and gets what is left.

Pure and thread-safe (no libvirt).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque

DEFAULT_CAPACITY = 1000


class EventLog:
    def __init__(self, capacity: int = DEFAULT_CAPACITY,
                 clock=time.time) -> None:
        self.instance = str(uuid.uuid4())
        self._events: deque[dict] = deque(maxlen=capacity)
        self._seq = 0
        self._changed = threading.Condition()
        self._clock = clock

    @property
    def seq(self) -> int:
        with self._changed:
            return self._seq

    def append(self, vm_id: str, name: str, status: str, exit_reason: str | None) -> dict:
        """Record one status change and wake every waiting reader."""
        with self._changed:
            self._seq += 1
            event = {"seq": self._seq, "vm_id": vm_id, "name": name, "status": status,
                     "exit_reason": exit_reason, "time": self._clock()}
            self._events.append(event)
            self._changed.notify_all()
            return event

    def after(self, seq: int, timeout: float = 0.0) -> dict:
        """The events after ``seq``, waiting up to ``timeout`` s for the first one.

        ``seq`` greater than the last number (a client of an earlier agent
        process) is answered at once with everything kept and ``gap`` set.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            if seq > self._seq:
                return self._answer(0, gap=True)
            while self._seq == seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            oldest = self._events[0]["seq"] if self._events else self._seq + 1
            return self._answer(seq, gap=seq + 1 < oldest)

    def _answer(self, seq: int, gap: bool) -> dict:
        return {"instance": self.instance, "seq": self._seq, "gap": gap,
                "events": [dict(e) for e in self._events if e["seq"] > seq]}
