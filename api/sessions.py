"""/v1/sessions/<id>: a session's state, and closing it (its container is destroyed by a
worker, or recycled; the API holds no runtime). Session ids are per tenant: a tenant sees
and closes only its own."""

from celery.exceptions import TimeoutError as CeleryTimeout
from flask import Blueprint

from pool_manager.schemas import tenant_session
from workers.names import CLOSE_SESSION_TASK, POOL_QUEUE

from .auth import tenant
from .errors import ApiError
from .services import services

bp = Blueprint("sessions", __name__, url_prefix="/v1/sessions")
CLOSE_WAIT_S = 10


@bp.get("/<session_id>")
def read(session_id: str):
    return session_view(session_id, known_session(session_id))


@bp.delete("/<session_id>")
def close(session_id: str):
    session = known_session(session_id)
    if session.get("state") != "active":
        return session_view(session_id, session)
    result = services().celery.send_task(CLOSE_SESSION_TASK, kwargs={"session_id": session_id, "tenant": tenant()},
                                         queue=POOL_QUEUE)
    try:
        result.get(timeout=CLOSE_WAIT_S)
    except CeleryTimeout:
        return {"id": session_id, "state": "closing"}, 202
    return session_view(session_id, services().pools.session(tenant_session(tenant(), session_id)))


def known_session(session_id: str) -> dict:
    """The caller's session of that name; 404 if the caller never started one."""
    svc, name = services(), tenant_session(tenant(), session_id)
    if len(session_id) > 128 or not svc.jobs.session_started(name):
        raise ApiError(404, "session_not_found", f"no session {session_id!r}")
    return svc.pools.session(name) or {"state": "starting"}  # its first job has not claimed yet


def session_view(session_id: str, session: dict) -> dict:
    view = {"id": session_id, "state": session.get("state"), "model": session.get("pool")}
    if session.get("state") == "active":
        view["container"] = session.get("container")
    if "created_at" in session:
        view["created_at"] = float(session["created_at"])
    return view
