"""Waiting for an agent's volume job (upload, import, export, copy, seal) to end.

The agent runs long volume work as jobs the engine polls (GET /jobs/{id}). A job
that fails comes back as the exception the agent raised there, so callers map
fields to option names as for any agent call. A job that outlives ``timeout`` is
aborted (the agent cleans up what it wrote), and so is one whose engine API job
its user cancelled (job_context): Cancelled then tells the caller to undo its rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from engine_lib.broker import AgentApi, rebuild_error
from engine_lib.protocol.errors import AgentUnreachable, Cancelled, KestrelError, NotFound
from engine_lib.services import job_context

# Polls start quick (most checks and links end within a moment) and back off to this.
FIRST_POLL = 0.05
POLL_INTERVAL = 0.5
# A job whose agent does not answer this many polls in a row is given up on.
UNREACHABLE_POLLS = 10

Progress = Callable[[dict], None]


class JobLost(KestrelError):
    """The agent no longer knows the job (it restarted): what the job started outside the
    agent (QEMU's block job, say) may still run, so this is not the job's failure."""


def wait(agent: AgentApi, job_id: str, *, progress: Progress | None = None,
         timeout: float | None = None, forget: bool = True,
         clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> dict:
    """The job's result once it succeeded; its error raised otherwise.

    ``progress`` gets every polled job document (status, phase, progress,
    done_bytes, total_bytes). ``forget``: forget the job at the end (an export's
    file is read first, so its caller forgets it after reading).
    """
    deadline = None if timeout is None else clock() + timeout
    handle = job_context.current()
    misses, pause = 0, FIRST_POLL
    try:
        while True:
            asked = clock()
            try:
                # A long poll: the agent answers as soon as the job ends.
                job = agent.job(job_id, wait=pause)
                misses = 0
            except NotFound:
                raise JobLost(f"the agent no longer knows job {job_id} (was it "
                              "restarted?)", job=job_id) from None
            except AgentUnreachable:
                misses += 1
                if misses >= UNREACHABLE_POLLS:
                    raise
                job = None
            if job is not None:
                if progress is not None:
                    progress(job)
                if isinstance(job.get("progress"), (int, float)):
                    handle.progress(int(job["progress"]), job.get("phase") or job.get("kind", ""))
                status = job.get("status")
                if status == "succeeded":
                    return job.get("result") or {}
                if status in ("failed", "aborted"):
                    raise _job_error(job_id, job)
            if handle.cancel_requested():
                _abort(agent, job_id)
                forget = False
                kind = f" ({job['kind']})" if job and job.get("kind") else ""
                raise Cancelled(f"cancelled by its user: agent job {job_id}{kind} was "
                                "aborted; the agent removed what it had written", job=job_id)
            if deadline is not None and clock() >= deadline:
                _abort(agent, job_id)
                forget = False
                raise KestrelError(f"job {job_id} did not end within {timeout:g} s; it was "
                                   "aborted", job=job_id, timeout=timeout)
            # What the poll did not wait (an agent unreachable, or one without long polls).
            left = pause - (clock() - asked)
            if left > 0.001:
                sleep(left)
            pause = min(POLL_INTERVAL, pause * 2)
    finally:
        if forget:
            _abort(agent, job_id)


def _job_error(job_id: str, job: dict) -> KestrelError:
    error = job.get("error")
    if not isinstance(error, dict) or "message" not in error:
        return KestrelError(f"job {job_id} {job.get('status')}", job=job_id)
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    return rebuild_error(str(error.get("code", "")), str(error["message"]),
                         {**details, "job": job_id})


def _abort(agent: AgentApi, job_id: str) -> None:
    """Abort or forget the job; an agent that already forgot it (or is gone) is fine."""
    try:
        agent.forget_job(job_id)
    except (NotFound, AgentUnreachable):
        pass
