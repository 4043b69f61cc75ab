"""Slowing down guessed passwords: failed logins per username and per client address.

The state lives in the memory of the API process: it needs no write per failed
login and is forgotten on restart, which costs an attacker only a restart's worth of
attempts. Several API processes would each keep their own.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine_lib.protocol.errors import TooManyAttempts

# Failures are counted until none came for this long; so a patient guesser who
# waits out each delay keeps the delay growing.
WINDOW = 15 * 60
FREE_FAILURES = 3  # failures within the window before attempts are refused
FIRST_DELAY, MAX_DELAY = 1, 300  # seconds, doubling with each further failure
MAX_KEYS = 100_000  # bound on memory: an attacker may vary names and addresses


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    blocked_until: float = 0.0


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], _Record] = {}

    def check(self, username: str, client: str) -> None:
        """Raise TooManyAttempts while either the name or the address is held back."""
        now = self._clock()
        with self._lock:
            wait = max((record.blocked_until - now for record in self._find(username, client)),
                       default=0.0)
        if wait > 0:
            raise TooManyAttempts(math.ceil(wait))

    def failed(self, username: str, client: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._records) >= MAX_KEYS:
                self._forget_old(now)
            for key in (("user", username), ("client", client)):
                record = self._records.setdefault(key, _Record())
                if now - record.last_failure >= WINDOW:
                    record.failures = 0
                record.failures += 1
                record.last_failure = now
                extra = record.failures - FREE_FAILURES
                if extra >= 0:
                    record.blocked_until = now + min(MAX_DELAY, FIRST_DELAY * 2 ** extra)

    def succeeded(self, username: str) -> None:
        """A right password clears the name; the address keeps its failures, so one
        valid account does not give an attacker fresh guesses at others."""
        with self._lock:
            self._records.pop(("user", username), None)

    def _find(self, username: str, client: str) -> list[_Record]:
        keys = (("user", username), ("client", client))
        return [self._records[key] for key in keys if key in self._records]

    def _forget_old(self, now: float) -> None:
        self._records = {key: record for key, record in self._records.items()
                         if now - record.last_failure < WINDOW}
