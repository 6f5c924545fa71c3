"""Serving one chat job: find the session's container (claiming a warm one for a new
session), relay the messages, record the reply with its timings.

Idempotent by job id: a redelivered job finds its finished record, or, for a new session
(whose id is the job id), the container it claimed the first time.
"""

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager

import httpx
from pydantic import ValidationError

from .errors import (ClaimTimeout, ContainerLost, ContainerTimeout, GreenroomError, JobCancelled, ModelError,
                     NoIdleContainer, SessionBusy)
from .httpclient import http_client
from .jobs import FINAL, JobStore
from .manager import PoolManager
from .schemas import ChatJob
from .state import Claim

log = logging.getLogger(__name__)
POLL_S = 0.02  # how often a waiting job retries its claim
CHECK_S = 0.25  # how often it checks for cancellation and updates its place in line


class ChatRelay:
    def __init__(self, manager: PoolManager, jobs: JobStore, request_reconcile: Callable[[str], None]):
        self.manager = manager
        self.jobs = jobs
        self.request_reconcile = request_reconcile  # must return at once (it sends a task)
        self.settings = manager.settings

    def serve(self, job_id: str, model: str, messages: list, session_id: str | None = None,
              options: dict | None = None) -> dict:
        """Run the job to a final state and return its record."""
        session = session_id or job_id  # a new session is named after its first job
        # A job sent with send_task has no record yet; one submitted over HTTP has.
        job = self.jobs.create(job_id, tenant="", model=str(model), session_id=str(session)) or self.jobs.get(job_id)
        if job["status"] not in FINAL:
            fields = {"model": model, "messages": messages, "session_id": session_id, "options": options or {}}
            self._run_to_end(job_id, session, float(job["created_at"]), fields)
        return self.jobs.get(job_id)

    def _run_to_end(self, job_id: str, session: str, created_at: float, fields: dict) -> None:
        """Serve the job and record how it ended; its latency counts in the metrics."""
        try:
            request = ChatJob(**fields)
            self.jobs.succeed(job_id, self._run(job_id, request, session, created_at))
            outcome = "succeeded"
        except ValidationError as exc:
            self.jobs.fail(job_id, "invalid_request", _first_problem(exc))
            return
        except JobCancelled:
            return
        except GreenroomError as exc:
            self.jobs.fail(job_id, exc.code, str(exc))
            outcome = "failed"
        except Exception:  # a bug must not leave the job "running" forever
            log.exception("job %s: unexpected error", job_id)
            self.jobs.fail(job_id, "internal_error", "internal error; the worker log has details")
            raise
        if request.model in self.settings.pools:
            self.manager.state.incr_stat(request.model, f"jobs_{outcome}")
            self.manager.metrics.observe("job_latency_seconds", request.model, time.time() - created_at)

    def _run(self, job_id: str, request: ChatJob, session: str, created_at: float) -> dict:
        model = request.model
        body = request.options | {"model": model, "messages": request.model_dump(mode="json")["messages"]}
        began = time.time()
        deadline = time.monotonic() + self.settings.claim_timeout_s  # for every wait of this job together
        claim, waited = self._claim(job_id, model, session, deadline)
        try:
            reply, in_container = self._relay(job_id, claim, session, body, deadline)
        except ContainerLost as exc:
            self.manager.close_session(session, reason="broken")
            if not claim.new or isinstance(exc, ContainerTimeout):
                raise
            log.warning("job %s: container %s lost on a first message; retrying once", job_id, claim.container.id)
            self.manager.state.discard_session(session)
            claim, waited_again = self._claim(job_id, model, session, deadline)
            waited += waited_again
            reply, in_container = self._relay(job_id, claim, session, body, deadline)
        finished = time.time()
        reply["greenroom"] = {
            "job_id": job_id, "session_id": session, "container": claim.container.id,
            "warm": waited == 0.0, "new_session": claim.new,
            "timings": {"queued_s": round(began - created_at, 6), "waited_for_container_s": round(waited, 6),
                        "in_container_s": round(in_container, 6), "total_s": round(finished - created_at, 6)},
        }
        return reply

    def _claim(self, job_id: str, pool: str, session: str, deadline: float) -> tuple[Claim, float]:
        """Claim at once, or wait in line while the pool boots more; the wait is 0.0 when
        a container was ready."""
        began = time.monotonic()
        waiting = False
        next_check = began
        try:
            while True:
                try:
                    claim = self.manager.claim(pool, session, job_id)
                    break
                except NoIdleContainer:
                    if not waiting:
                        waiting = True
                        self._enter_line(job_id, pool)
                    if (now := time.monotonic()) >= next_check:
                        self._check_still_wanted(job_id, pool)
                        next_check = now + CHECK_S
                    if now > deadline:
                        raise ClaimTimeout(
                            f"no {pool!r} container became free in {self.settings.claim_timeout_s}s") from None
                    time.sleep(POLL_S)
        finally:
            if waiting:
                self.manager.state.remove_waiting(pool, job_id)
        waited = (time.monotonic() - began) if waiting else 0.0
        if claim.new:
            self.request_reconcile(pool)  # replace the container just taken, now
            self.manager.state.incr_stat(pool, "claims_waited" if waiting else "claims_warm")
            self.manager.metrics.observe("claim_wait_seconds", pool, waited)
        if not self.jobs.transition(job_id, "running", allowed_from=("queued", "waiting_for_container", "running"),
                                    container=claim.container.id):
            if claim.new:
                self.manager.close_session(session)
            raise JobCancelled(job_id)
        return claim, waited

    def _enter_line(self, job_id: str, pool: str) -> None:
        position = self.manager.state.add_waiting(pool, job_id)
        self.jobs.transition(job_id, "waiting_for_container", allowed_from=("queued", "waiting_for_container"),
                             position=position)
        self.request_reconcile(pool)  # the line is demand: boot for it without waiting for beat

    def _check_still_wanted(self, job_id: str, pool: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job["status"] == "cancelled":
            raise JobCancelled(job_id)
        position = self.manager.state.waiting_position(pool, job_id)
        if str(position) != job.get("position"):
            self.jobs.transition(job_id, "waiting_for_container", allowed_from=("waiting_for_container",),
                                 position=position)

    def _relay(self, job_id: str, claim: Claim, session: str, body: dict, deadline: float) -> tuple[dict, float]:
        """POST the messages to the container, one message of a session at a time."""
        with self._session_turn(job_id, session, deadline):
            self.manager.renew(claim)
            began = time.monotonic()
            try:
                response = http_client().post(f"{claim.container.endpoint}/v1/chat/completions", json=body,
                                              timeout=self.settings.chat_timeout_s)
            except httpx.TimeoutException as exc:
                raise ContainerTimeout(f"container gave no reply within {self.settings.chat_timeout_s}s") from exc
            except httpx.TransportError as exc:
                raise ContainerLost(f"container {claim.container.id} stopped answering: {exc}") from exc
            in_container = time.monotonic() - began
            self.manager.renew(claim)
        if response.status_code != 200:
            raise ModelError(f"model server answered {response.status_code}: {response.text[:500]}")
        try:
            return response.json(), in_container
        except ValueError as exc:
            raise ModelError("model server answered 200 with a body that is not JSON") from exc

    @contextmanager
    def _session_turn(self, job_id: str, session: str, deadline: float):
        name = f"session:{session}"
        hold_s = self.settings.chat_timeout_s + 10
        while not self.manager.state.try_lock(name, job_id, hold_s):
            if time.monotonic() > deadline:
                raise SessionBusy(f"session {session!r} stayed busy for {self.settings.claim_timeout_s}s")
            time.sleep(POLL_S)
        try:
            yield
        finally:
            self.manager.state.unlock(name, job_id)


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
