"""Long volume work (uploads, imports, exports, copies) as jobs the engine polls.

A job runs in a thread of its own, or, while an upload receives its bytes, in
the request thread that streams them; either way it has one owner at a time
(``busy``). At most one job works on a target volume at a time: a second gets
Conflict naming the volume, so two uploads to one disk cannot both write it.

A job that does not end in success runs its cleanups (staging files, half
volumes) before it is reported finished, so a client that sees ``failed`` or
``aborted`` sees a domain with nothing left behind. A finished job is kept for
the engine to read (at least an hour, or among the last 200); forgetting it
runs its ``on_forget`` (an export's staging file goes then).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from engine_lib.protocol.errors import Conflict, KestrelError, NotFound

log = logging.getLogger("kestrel.agent.jobs")

KEEP_SECONDS = 3600.0
KEEP_COUNT = 200
# An upload whose client never sends (or finishes) the bytes gives its volume back.
IDLE_SECONDS = 3600.0
ABORT_WAIT = 60.0

RUNNING, SUCCEEDED, FAILED, ABORTED = "running", "succeeded", "failed", "aborted"


class Aborted(Exception):
    """Raised inside a job's work when DELETE /jobs/{id} asked it to stop."""


class Job:
    def __init__(self, kind: str, target: str):
        self.id = str(uuid.uuid4())
        self.kind = kind
        self.target = target  # "domain/image/volume", or "" when the job writes no volume
        self.status = RUNNING
        self.phase = ""
        self.done_bytes = 0
        self.total_bytes = 0
        self.progress = 0.0
        self.result: dict | None = None
        self.error: dict | None = None
        self.data: dict[str, Any] = {}  # the owner's own state (staging names, lengths...)
        self.cleanups: list[Callable[[], None]] = []  # run, newest first, unless it succeeds
        self.closers: list[Callable[[], None]] = []  # run however it ends (descriptors)
        self.on_forget: Callable[[], None] | None = None
        self.abort = threading.Event()
        self.finished = threading.Event()
        self.busy = False
        self.ending = False  # finish() claimed it: its cleanups run once
        self.touched = time.monotonic()
        self.finished_at = 0.0

    def check(self) -> None:
        """Stop here when an abort was asked."""
        if self.abort.is_set():
            raise Aborted("aborted on request")

    def report(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total_bytes = total
        self.done_bytes = done
        if self.total_bytes:
            self.progress = min(100.0, 100.0 * done / self.total_bytes)
        self.touched = time.monotonic()

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "status": self.status, "phase": self.phase,
                "progress": round(self.progress, 1), "done_bytes": self.done_bytes,
                "total_bytes": self.total_bytes, "result": self.result, "error": self.error}


class Jobs:
    """The registry; ``clock`` is a seam for the retention tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._targets: dict[str, str] = {}  # target -> running job id

    def create(self, kind: str, target: str = "") -> Job:
        """A new running job; Conflict when another job works on ``target``."""
        self.prune()
        job = Job(kind, target)
        job.touched = self._clock()
        with self._lock:
            if target:
                other = self._targets.get(target)
                if other is not None:
                    raise Conflict(f"volume {target} is busy with job {other} "
                                   f"({self._jobs[other].kind}); wait for it or abort it",
                                   volume=target, job=other)
                self._targets[target] = job.id
            self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound("job", job_id)
        return job

    def take(self, job_id: str, kind: str) -> Job:
        """Become the job's owner for a step (an upload's PUT); Conflict if it has one."""
        job = self.get(job_id)
        with self._lock:
            if job.kind != kind:
                raise Conflict(f"job {job_id} is a {job.kind} job, not {kind}", job=job_id)
            if job.status != RUNNING or job.busy or job.abort.is_set():
                state = "busy" if job.busy else \
                    "being aborted" if job.status == RUNNING else job.status
                raise Conflict(f"job {job_id} is {state}", job=job_id, status=job.status)
            job.busy = True
        return job

    def release(self, job: Job) -> None:
        """The owner's step is over; the job waits for the next (an idle abort ends it now)."""
        with self._lock:
            job.busy = False
            job.touched = self._clock()
        if job.abort.is_set():
            self.finish(job, Aborted())

    def run(self, job: Job, work: Callable[[Job], dict]) -> None:
        """Run ``work(job)`` in a thread; its return is the result, an exception the error.
        The caller must own the job (create or take)."""
        with self._lock:
            job.busy = True
        thread = threading.Thread(target=self._run, args=(job, work),
                                  name=f"job-{job.kind}-{job.id[:8]}", daemon=True)
        thread.start()

    def _run(self, job: Job, work: Callable[[Job], dict]) -> None:
        try:
            outcome: dict | BaseException = work(job)
        except (Aborted, KestrelError) as exc:
            outcome = exc
        except Exception as exc:  # reported on the job, not lost in a thread
            log.exception("%s job %s: internal error", job.kind, job.id)
            outcome = KestrelError(f"internal agent error: {type(exc).__name__}: {exc}")
        self.finish(job, outcome)

    def finish(self, job: Job, outcome: dict | BaseException) -> None:
        """End the job: success with a result, else cleanups first, then failed/aborted."""
        with self._lock:
            if job.status != RUNNING or job.ending:
                return
            job.ending = True
        for cleanup in [*([] if isinstance(outcome, dict) else reversed(job.cleanups)),
                        *reversed(job.closers)]:
            try:
                cleanup()
            except Exception:  # one failed cleanup must not skip the others
                log.exception("%s job %s: cleanup failed", job.kind, job.id)
        with self._lock:
            if isinstance(outcome, dict):
                job.status, job.result, job.progress = SUCCEEDED, outcome, 100.0
            elif isinstance(outcome, Aborted) or job.abort.is_set():
                job.status = ABORTED
                job.error = KestrelError("aborted on request").to_dict()
            else:
                job.status = FAILED
                error = outcome if isinstance(outcome, KestrelError) \
                    else KestrelError(str(outcome))
                job.error = error.to_dict()
            job.busy = False
            job.cleanups, job.closers = [], []
            job.finished_at = self._clock()
            if job.target and self._targets.get(job.target) == job.id:
                del self._targets[job.target]
        if job.error:
            log.warning("%s job %s %s: %s", job.kind, job.id, job.status,
                        job.error["message"])
        job.finished.set()

    def delete(self, job_id: str) -> dict:
        """Abort a running job (and wait until it cleaned up) or forget a finished one."""
        job = self.get(job_id)
        if job.status == RUNNING:
            job.abort.set()
            with self._lock:
                idle = not job.busy
            if idle:
                self.finish(job, Aborted())
            if not job.finished.wait(ABORT_WAIT):
                return {"id": job.id, "status": job.status, "aborting": True}
            return job.to_dict()
        self._forget(job)
        return {"id": job.id, "status": job.status, "forgotten": True}

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)
        if job.on_forget is not None:
            try:
                job.on_forget()
            except Exception:
                log.exception("%s job %s: removing its files failed", job.kind, job.id)

    def prune(self) -> None:
        """Forget finished jobs older than KEEP_SECONDS beyond the newest KEEP_COUNT;
        abort uploads left idle (no bytes, no commit) for IDLE_SECONDS."""
        now = self._clock()
        with self._lock:
            done = sorted((j for j in self._jobs.values() if j.status != RUNNING),
                          key=lambda j: j.finished_at, reverse=True)
            old = [j for j in done[KEEP_COUNT:] if now - j.finished_at > KEEP_SECONDS]
            idle = [j for j in self._jobs.values() if j.status == RUNNING and not j.busy
                    and now - j.touched > IDLE_SECONDS]
        for job in old:
            self._forget(job)
        for job in idle:
            job.abort.set()
            self.finish(job, Aborted())

    def abort_all(self, timeout: float = 10.0) -> None:
        """On the agent's stop: every running job aborts and cleans up (an idle upload
        at once, a working one when it notices, within ``timeout``)."""
        with self._lock:
            running = [j for j in self._jobs.values() if j.status == RUNNING]
        for job in running:
            job.abort.set()
            with self._lock:
                idle = not job.busy
            if idle:
                self.finish(job, Aborted())
        for job in running:
            job.finished.wait(timeout)
