"""Errors of the lab: the test bed, not the product, but it fails just as clearly."""

from __future__ import annotations

from engine_lib.protocol.errors import KestrelError


class LabError(KestrelError):
    """A lab host could not be brought up, inspected or torn down.

    ``host`` names the lab host (or is empty for lab-wide steps); the message
    carries the failing command and what it printed.
    """

    code = "LabError"

    def __init__(self, message: str, host: str = ""):
        super().__init__(f"{host}: {message}" if host else message, host=host)
        self.host = host


class GuestBuildError(LabError):
    """The tiny test guest (kernel + busybox initramfs) could not be built."""

    code = "GuestBuildError"
