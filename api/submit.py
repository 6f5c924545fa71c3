"""Submitting a chat job, shared by /v1/jobs and /v1/chat/completions: validate, check the
model and the session, write the job record, then send greenroom.chat by name."""

import uuid

from kombu.exceptions import OperationalError

from pool_manager.errors import ContainerLost, LimitExceeded
from pool_manager.schemas import ChatJob, tenant_session
from workers.names import CHAT_QUEUE, CHAT_TASK

from .auth import tenant
from .errors import ApiError
from .services import services


def submit(job: ChatJob) -> dict:
    svc = services()
    if job.model not in svc.settings.pools:
        raise ApiError(404, "unknown_model", f"no model named {job.model!r}; see GET /v1/pools")
    job_id = str(uuid.uuid4())
    session_id = job.session_id or job_id
    if job.session_id:
        check_session_usable(job.session_id)
    try:
        record = svc.jobs.create(job_id, tenant=tenant(), model=job.model, session_id=session_id,
                                 request=job.task_kwargs(), limits=svc.settings.limits(tenant()),
                                 new_session=None if job.session_id else True)
    except LimitExceeded as exc:
        raise ApiError(429, exc.code, str(exc), headers={"Retry-After": str(exc.retry_after_s)},
                       limit=exc.limit) from exc
    if record is None:
        raise ApiError(409, "conflict", "job id collision; retry")  # a uuid4 collision: never, in practice
    try:
        # The job record carries the result: no copy in Celery's result backend, and no
        # result subscription opened (and closed) per send.
        svc.celery.send_task(CHAT_TASK, kwargs=job.task_kwargs(), task_id=job_id, queue=CHAT_QUEUE,
                             ignore_result=True)
    except OperationalError as exc:
        svc.jobs.fail(job_id, "broker_unavailable", "the job could not be queued")
        raise ApiError(503, "broker_unavailable", "the job queue is unreachable; retry later") from exc
    return record


def check_session_usable(session_id: str) -> None:
    """A session id names one of the caller's sessions, or a new one the caller starts
    (ids are per tenant: another tenant's session of the same name is another session).
    An ended one cannot take messages."""
    session = services().pools.session(tenant_session(tenant(), session_id))
    if session.get("state") in ("closed", "broken"):
        why = f" ({session['why']})" if session.get("why") else ""
        lost = session.get("why", "").startswith(ContainerLost.code)  # its engine was lost (engines.py)
        code = ContainerLost.code if lost else "session_closed"
        raise ApiError(409, code, f"session {session_id!r} is {session['state']}{why}; start a new one")
