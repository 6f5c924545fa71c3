"""Serving one chat job: find the session's container (claiming a warm one for a new
session), relay the messages, record the reply with its timings.

Idempotent by job id: a redelivered job finds its finished record, or, for a new session
(whose id is the job id), the container it claimed the first time. Each delivery holds
the job's lease while it works (jobs.py); a duplicate delivery, which finds another's
live lease, does nothing. A job that finds no container free parks in the pool's line
and its delivery ends; the hand-off sends it again with a container (handoff.py).
"""

import logging
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from pydantic import ValidationError

from .errors import (ContainerLost, ContainerTimeout, ContainerUnreachable, DeliveryLost, GreenroomError,
                     JobCancelled, LimitExceeded, ModelError, Parked, SessionBusy)
from .heartbeat import Heartbeat
from .chunks import Assembly
from .httpclient import post_bounded, post_streamed
from .jobs import JobStore
from .manager import PoolManager
from .schemas import ChatJob, tenant_of, tenant_session
from .settings import SEND_TASK_TENANT
from .state import Claim, Container

log = logging.getLogger(__name__)
POLL_S = 0.02  # how often a message waits for its session's turn
STREAMED = {"stream": True, "stream_options": {"include_usage": True}}  # the record keeps the usage


@dataclass(frozen=True)
class Delivery:
    """One attempt at serving a job. Its token fences out every other attempt's writes."""

    job_id: str
    token: str
    lost: threading.Event  # set once the lease lapsed and another delivery may have the job
    waited_s: float  # how long the job waited parked in line, up to now

    def check(self) -> None:
        if self.lost.is_set():
            raise DeliveryLost(f"job {self.job_id} was handed to another delivery")


class ChatRelay:
    def __init__(self, manager: PoolManager, jobs: JobStore, request_reconcile: Callable[[str], None]):
        self.manager = manager
        self.jobs = jobs
        self.request_reconcile = request_reconcile  # must return at once (it sends a task)
        self.settings = manager.settings
        self.lease_s = self.settings.job_lease_s
        self.heartbeat = Heartbeat(self.lease_s / 3)

    def serve(self, job_id: str, model: str, messages: list, session_id: str | None = None,
              options: dict | None = None, stream: bool = False) -> dict | None:
        """Run the job to a final state and return its record; None when this delivery ends
        without an outcome: another holds the job (a duplicate, to be dropped), or the job
        parked in line to be sent again."""
        public_session = session_id or job_id  # a new session is named after its first job
        request = {"model": model, "messages": messages, "session_id": session_id, "options": options or {},
                   "stream": stream or None}
        request = {name: value for name, value in request.items() if value is not None}
        if not self._admit_send_task(job_id, str(model), str(public_session), request):
            return self.jobs.get(job_id)
        token = secrets.token_hex(8)
        taken, job = self.jobs.take(job_id, token, self.lease_s)
        if taken == "held":
            return None
        if taken == "taken":
            with self.heartbeat.keep(lambda: self.jobs.renew(job_id, token, self.lease_s)) as lost:
                session = tenant_session(job["tenant"], public_session)
                try:
                    self._run_to_end(Delivery(job_id, token, lost, job["waited_s"]), session, job["created_at"],
                                     request)
                except Parked:
                    return None
        record = self.jobs.get(job_id)
        if taken == "final":
            self._close_unclaimed(record, public_session)
        return record

    def _close_unclaimed(self, record: dict, public_session: str) -> None:
        """A job cancelled after the hand-off opened its session on a container and before
        it could take it: nobody else will close that session."""
        session = tenant_session(record["tenant"], public_session)
        if self.manager.state.session(session).get("handed_to") == record["id"]:
            self.manager.close_session(session)

    def _admit_send_task(self, job_id: str, model: str, public_session: str, request: dict) -> bool:
        """A job sent with send_task has no record yet: it belongs to SEND_TASK_TENANT and is
        admitted within that tenant's limits (refused: recorded as failed). One submitted
        over HTTP was admitted by the API; for it this changes nothing."""
        try:
            self.jobs.create(job_id, tenant=SEND_TASK_TENANT, model=model, session_id=public_session,
                             request=request, limits=self.settings.limits(SEND_TASK_TENANT))
        except LimitExceeded as exc:
            self.jobs.refuse(job_id, tenant=SEND_TASK_TENANT, model=model, session_id=public_session, error=exc)
            return False
        return True

    def _run_to_end(self, delivery: Delivery, session: str, created_at: float, fields: dict) -> None:
        """Serve the job in session (greenroom's name for it, tenant_session's) and record how
        it ended; its latency counts in the metrics."""
        job_id, token = delivery.job_id, delivery.token
        try:
            request = ChatJob(**fields)
            self.jobs.succeed(job_id, self._run(delivery, request, session, created_at), token)
            outcome = "succeeded"
        except ValidationError as exc:
            self.jobs.fail(job_id, "invalid_request", _first_problem(exc), token)
            return
        except (JobCancelled, DeliveryLost):
            return
        except Parked:
            raise
        except GreenroomError as exc:
            self.jobs.fail(job_id, exc.code, str(exc), token)
            outcome = "failed"
        except Exception:  # a bug must not leave the job "running" forever
            log.exception("job %s: unexpected error", job_id)
            self.jobs.fail(job_id, "internal_error", "internal error; the worker log has details", token)
            raise
        if request.model in self.settings.pools:
            self.manager.state.incr_stat(request.model, f"jobs_{outcome}")
            self.manager.metrics.observe("job_latency_seconds", request.model, time.time() - created_at)

    def _run(self, delivery: Delivery, request: ChatJob, session: str, created_at: float) -> dict:
        job_id, model = delivery.job_id, request.model
        body = request.options | {"model": model, "messages": request.model_dump(mode="json")["messages"]}
        began = time.time()
        deadline = time.monotonic() + self.settings.claim_timeout_s  # for the session's turn
        claim, lost = self._claim(delivery, model, session), 0
        while True:
            try:
                reply, in_container = self._relay(delivery, claim, session, body, request.stream, deadline)
                break
            except ContainerLost as exc:
                delivery.check()  # the container is the new delivery's business now
                self.manager.close_session(session, reason="broken")
                if not self._may_try_again(claim, request, exc, lost, deadline):
                    raise
                lost += not isinstance(exc, ContainerUnreachable)
                log.warning("job %s: container %s failed a first message (%s); trying another", job_id,
                            claim.container.id, exc)
                self.manager.state.discard_session(session)
                claim = self._claim(delivery, model, session)
        finished, waited = time.time(), delivery.waited_s
        reply["greenroom"] = {
            "job_id": job_id, "session_id": request.session_id or job_id, "container": claim.container.id,
            "warm": waited == 0.0, "new_session": claim.new,
            # queued: in the broker's queues (a parked job's delivery begins after its wait)
            "timings": {"queued_s": round(began - created_at - waited, 6), "waited_for_container_s": round(waited, 6),
                        "in_container_s": round(in_container, 6), "total_s": round(finished - created_at, 6)},
        }
        return reply

    @staticmethod
    def _may_try_again(claim: Claim, request: ChatJob, exc: ContainerLost, lost: int, deadline: float) -> bool:
        """A new session's first message whose container failed it goes to another warm one:
        while time is left if it never reached the container (a lost engine's containers
        refuse one after another); once if the container died under it (twice, and the
        message may be what kills them), unless it streamed (its chunks are out). Not after
        a timeout."""
        if not claim.new or isinstance(exc, ContainerTimeout):
            return False
        if isinstance(exc, ContainerUnreachable):  # nothing went out, not even a stream's first chunk
            return time.monotonic() < deadline
        return lost == 0 and not request.stream

    def _claim(self, delivery: Delivery, pool: str, session: str) -> Claim:
        """The session's container, or a warm one for a new session. None free: the job parks
        in line (Parked), to be sent again once the hand-off gives it one."""
        job_id, waited = delivery.job_id, delivery.waited_s
        claim = self.manager.claim(pool, session, job_id)
        if claim is None:
            delivery.check()
            if self.manager.park(pool, tenant_of(session), job_id, delivery.token):
                self.request_reconcile(pool)  # the line is demand: boot for it, and hand off after
                raise Parked(job_id)
            if (self.jobs.get(job_id) or {}).get("status") == "cancelled":
                raise JobCancelled(job_id)
            raise DeliveryLost(f"job {job_id} was handed to another delivery")
        if claim.new:
            self.request_reconcile(pool)  # replace the container just taken, now
            self.manager.state.incr_stat(pool, "claims_waited" if waited else "claims_warm")
            self.manager.metrics.observe("claim_wait_seconds", pool, waited)
        if not self.jobs.transition(job_id, "running", allowed_from=("queued", "waiting_for_container", "running"),
                                    delivery=delivery.token, container=claim.container.id):
            if (self.jobs.get(job_id) or {}).get("status") != "cancelled":  # the session is the new holder's
                raise DeliveryLost(f"job {job_id} was handed to another delivery")
            if claim.new:
                self.manager.close_session(session)
            raise JobCancelled(job_id)
        return claim

    def _relay(self, delivery: Delivery, claim: Claim, session: str, body: dict, stream: bool,
               deadline: float) -> tuple[dict, float]:
        """POST the messages to the container, one message of a session at a time; the
        reply, and the time it took."""
        with self._session_turn(delivery, session, deadline):
            delivery.check()
            self.manager.renew(claim)
            began = time.monotonic()
            try:
                reply = self._ask(delivery, claim.container, body, stream)
            except ModelError as exc:
                if exc.status and exc.status >= 500:  # the model failed: its memory is not to be trusted
                    self.manager.close_session(session, reason="broken")
                    self.manager.state.incr_stat(claim.container.pool, "model_failures")
                raise
            in_container = time.monotonic() - began
            self.manager.renew(claim)
        return reply, in_container

    def _ask(self, delivery: Delivery, container: Container, body: dict, stream: bool) -> dict:
        """The model's reply; streamed, each chunk goes to the job's log as it arrives."""
        url, bounds = f"{container.endpoint}/v1/chat/completions", (self.settings.chat_timeout_s,
                                                                     self.settings.max_reply_bytes)
        if not stream:
            return post_bounded(url, body, container.key, *bounds)
        if not self.jobs.start_stream(delivery.job_id, delivery.token):
            self.jobs.log.append(delivery.job_id, "restart", {"reason": "the worker streaming the reply was lost; "
                                                                        "the reply starts over"})
        assembly = Assembly()
        for chunk in post_streamed(url, body | STREAMED, container.key, *bounds):
            delivery.check()  # a lost delivery writes no more
            self.jobs.log.append(delivery.job_id, "chunk", chunk)
            assembly.add(chunk)
        return assembly.completion()

    @contextmanager
    def _session_turn(self, delivery: Delivery, session: str, deadline: float):
        """One delivery at a time per session. The turn is a lock held like the job's
        lease: a dead delivery's lapses as its job's does."""
        name, state = f"session:{session}", self.manager.state
        while not state.try_lock(name, delivery.token, self.lease_s):
            if time.monotonic() > deadline:
                raise SessionBusy(f"session {session!r} stayed busy for {self.settings.claim_timeout_s}s")
            time.sleep(POLL_S)
        try:
            with self.heartbeat.keep(lambda: state.renew_lock(name, delivery.token, self.lease_s)):
                yield
        finally:
            state.unlock(name, delivery.token)


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
