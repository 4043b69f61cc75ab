"""A job handle for tests of progress and cancellation inside the services: it records
every progress report and asks to cancel once a chosen report came (no timing involved)."""

from __future__ import annotations

from collections.abc import Callable


class RecordingJob:
    """``cancel_at``: a phase substring, or a predicate over (percent, phase); once a
    report matches, ``cancel_requested()`` is True from then on."""

    def __init__(self, cancel_at: str | Callable[[int, str], bool] | None = None):
        self.reports: list[tuple[int, str]] = []
        self.cancel_at = cancel_at
        self.cancelled = False

    def progress(self, percent: int, phase: str = "") -> None:
        self.reports.append((percent, phase))
        if isinstance(self.cancel_at, str):
            self.cancelled |= self.cancel_at in phase
        elif self.cancel_at is not None:
            self.cancelled |= self.cancel_at(percent, phase)

    def cancel_requested(self) -> bool:
        return self.cancelled

    @property
    def phases(self) -> list[str]:
        return [phase for _, phase in self.reports]

    @property
    def percents(self) -> list[int]:
        return [percent for percent, _ in self.reports]
