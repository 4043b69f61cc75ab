"""Long operations run as jobs: a bounded pool of worker threads, one ``api_jobs`` row each.

A job runs under its user's actor and a handle (services.job_context) that writes its
progress to the row at most once a second and learns of a cancel request from the row
(re-read at most every half second), so any process serving the API can cancel it and
the job's user sees its progress from any of them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from fastapi.encoders import jsonable_encoder
from sqlalchemy import func, select

from engine_lib.model import ApiJob
from engine_lib.protocol.errors import (
    Busy,
    Cancelled,
    Conflict,
    InternalError,
    KestrelError,
    NotFound,
)
from engine_lib.services import actor as actors
from engine_lib.services import job_context
from engine_lib.services.common import iso_utc
from engine_lib.store import Store

__all__ = ["JobRunner", "job_dict"]

log = logging.getLogger("kestrel.api.jobs")

DEFAULT_WORKERS = 8
PROGRESS_EVERY = 1.0  # seconds between progress writes
CANCEL_CACHE = 0.5  # seconds a cancel_requested answer is reused
RESTARTED = "the engine API restarted while the job ran"
MAX_WAIT = 30.0  # seconds a GET /jobs/{id}?wait= may hold its answer
_WAIT_TICK = 0.02  # how often a held GET looks whether its job ended



def job_dict(job: ApiJob) -> dict[str, Any]:
    return {"id": job.id, "operation": job.operation, "user": job.user_name,
            "status": job.status, "progress": job.progress, "phase": job.phase,
            "created": iso_utc(job.created), "ended": iso_utc(job.ended),
            "result": job.result, "error": job.error}


class _Handle:
    """services.job_context.JobHandle backed by the job's row."""

    def __init__(self, store: Store, job_id: str, clock: Callable[[], float] = time.monotonic):
        self._store = store
        self._id = job_id
        self._clock = clock
        self._written = float("-inf")
        self._pending: tuple[int, str] | None = None
        self._checked = float("-inf")
        self._cancel = False

    def progress(self, percent: int, phase: str = "") -> None:
        self._pending = (max(0, min(100, int(percent))), phase[:64])
        if self._clock() - self._written >= PROGRESS_EVERY:
            self.flush()

    def flush(self) -> None:
        if self._pending is None:
            return
        percent, phase = self._pending
        self._pending = None
        self._written = self._clock()
        with self._store.transaction() as session:
            job = session.get(ApiJob, self._id)
            if job is not None and job.status == "running":
                job.progress, job.phase = percent, phase

    def cancel_requested(self) -> bool:
        if not self._cancel and self._clock() - self._checked >= CANCEL_CACHE:
            self._checked = self._clock()
            with self._store.transaction(commit=False) as session:
                self._cancel = bool(session.scalar(
                    select(ApiJob.cancel_requested).where(ApiJob.id == self._id)))
        return self._cancel


class JobRunner:
    def __init__(self, store: Store, workers: int = DEFAULT_WORKERS):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._store = store
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="kestrel-job")
        # Taken before submitting: a full pool answers Busy instead of queueing.
        self._slots = threading.BoundedSemaphore(workers)
        self.workers = workers
        # Each running job's outcome, settled once its end is in its row: a held GET
        # answers then (not at its next poll), and whoever answers with the outcome
        # never gets ahead of what GET /jobs says.
        self._outcomes: dict[str, Future] = {}

    def recover(self) -> int:
        """Jobs a previous process left running can never finish: mark them failed."""
        error = InternalError(RESTARTED).to_dict()
        with self._store.transaction() as session:
            jobs = session.scalars(select(ApiJob).where(ApiJob.status == "running")).all()
            for job in jobs:
                job.status, job.error, job.ended = "failed", error, datetime.now(UTC)
        return len(jobs)

    def start(self, operation: str, call: Callable[[], Any]) -> dict[str, Any]:
        """Run ``call`` as a job of the current actor; its return value becomes the job's
        result (made JSON-able). Raises Busy when every worker is taken."""
        return self.submit(operation, call)[0]

    def submit(self, operation: str,
               call: Callable[[], Any]) -> tuple[dict[str, Any], Future]:
        """start(), and a future of what ``call`` returned or raised, settled only once
        the job's row has recorded its end."""
        if not self._slots.acquire(blocking=False):
            raise Busy(f"the engine runs {self.workers} long operations already; "
                       "try again later", workers=self.workers)
        try:
            who = actors.current()
            with self._store.transaction() as session:
                job = ApiJob(operation=operation, user_name=who.name, token_id=who.token_id)
                session.add(job)
                session.flush()
                started = job_dict(job)
            outcome: Future = Future()
            self._outcomes[started["id"]] = outcome
            self._pool.submit(self._run, started["id"], who, call)
        except BaseException:
            self._slots.release()
            raise
        return started, outcome

    def _run(self, job_id: str, who: actors.Actor, call: Callable[[], Any]) -> None:
        handle = _Handle(self._store, job_id)
        status, value, result, error = "succeeded", None, None, None
        raised: BaseException | None = None
        try:
            with actors.acting_as(who), job_context.running(handle):
                value = call()
                result = jsonable_encoder(value)
        except Cancelled as exc:
            status, error, raised = "cancelled", exc.to_dict(), exc
        except KestrelError as exc:
            status, error, raised = "failed", exc.to_dict(), exc
        except Exception as exc:  # the job's row must end either way; the trace goes to the log
            log.exception("job %s failed", job_id)
            status, error, raised = "failed", InternalError(
                "the operation failed unexpectedly; see the engine's log").to_dict(), exc
        finally:
            self._slots.release()
        try:
            with self._store.transaction() as session:
                job = session.get(ApiJob, job_id)
                if job is not None:
                    job.status, job.result, job.error = status, result, error
                    job.ended = datetime.now(UTC)
                    if status == "succeeded":
                        job.progress = 100
        except Exception:
            log.exception("could not record the end of job %s", job_id)
        finally:
            outcome = self._outcomes.pop(job_id, Future())
            if raised is None:
                outcome.set_result(value)
            else:
                outcome.set_exception(raised)

    async def wait(self, job_id: str, seconds: float) -> None:
        """Until the job (run by this process) has ended, at most ``seconds``; without a
        thread of the server's pool, so held GETs cannot starve other requests. A job
        this process does not run returns at once (the caller polls)."""
        outcome = self._outcomes.get(job_id)
        deadline = time.monotonic() + min(seconds, MAX_WAIT)
        while outcome is not None and not outcome.done() and time.monotonic() < deadline:
            await asyncio.sleep(_WAIT_TICK)

    # -- what the /jobs routes read --------------------------------------------------------

    def _owned(self, session, job_id: str, view_all: bool) -> ApiJob:
        job = session.get(ApiJob, job_id)
        if job is None or not (view_all or job.user_name == actors.current().name):
            # Someone else's job is as good as absent.
            raise NotFound("job", job_id)
        return job

    def get(self, job_id: str, *, view_all: bool = False) -> dict[str, Any]:
        with self._store.transaction(commit=False) as session:
            return job_dict(self._owned(session, job_id, view_all))

    def page(self, *, offset: int = 0, limit: int = 100, status: str | None = None,
             view_all: bool = False) -> dict[str, Any]:
        query = select(ApiJob)
        if not view_all:
            query = query.where(ApiJob.user_name == actors.current().name)
        if status:
            query = query.where(ApiJob.status == status)
        with self._store.transaction(commit=False) as session:
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            rows = session.scalars(query.order_by(ApiJob.created.desc(), ApiJob.id)
                                   .offset(offset).limit(limit)).all()
            return {"items": [job_dict(job) for job in rows], "total": total,
                    "offset": offset, "limit": limit}

    def cancel(self, job_id: str, *, view_all: bool = False) -> dict[str, Any]:
        """Ask a running job to stop; it does at its next safe point."""
        with self._store.transaction() as session:
            job = self._owned(session, job_id, view_all)
            if job.status != "running":
                raise Conflict(f"job '{job_id}' has ended ({job.status})", job=job_id,
                               status=job.status)
            job.cancel_requested = True
            return job_dict(job)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)
